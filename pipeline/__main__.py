"""``python -m pipeline <stage> [args]``: run one stage; errors become one line and exit 1."""

from __future__ import annotations

import importlib
import logging
import sys

# the DVC stages in pipeline order, then the commands that are no stages: predict serves, stack runs services,
# sweep fans experiments out over Dask, tracking syncs what an outage spooled (and names the store)
STAGES = ("download", "validate", "prepare", "stats", "augment", "pretrain", "train", "evaluate", "register", "report")
COMMANDS = ("predict", "stack", "sweep", "tracking")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in STAGES + COMMANDS:
        choices = ",".join(STAGES + COMMANDS)
        print(f"usage: python -m pipeline {{{choices}}} [args]  (got {argv[:1] or 'nothing'})", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    from pipeline.errors import PipelineError

    # Import lazily: a stage that does not train must not pay for TensorFlow.
    name = f"pipeline.{argv[0]}" if argv[0] in COMMANDS else f"pipeline.stages.{argv[0]}"
    module = importlib.import_module(name)
    try:
        module.main(argv[1:])
    except PipelineError as exc:
        logging.getLogger(name).error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
