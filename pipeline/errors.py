"""The one exception type a stage raises for bad input or a failed step."""


class PipelineError(Exception):
    """A failure the user can act on; the message names the file/key and the problem.

    ``python -m pipeline`` turns it into a one-line error and a non-zero exit
    instead of a traceback.
    """
