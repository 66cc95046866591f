"""``python -m pipeline.review.repro``: ``make review``'s ``dvc repro`` of the workspace, from the DVC remote where it can.

With ``--pull`` when the default DVC remote answers (after a bounded
``dvc fetch --run-cache``: :func:`pipeline.review.remote.usable`), so that on a
fresh clone every stage the remote holds (by ``dvc.lock`` or the run cache) is
pulled instead of run; else one log line says why not and it is a plain
``dvc repro``. ``--check`` only says whether the remote answers (exit 0 or 1).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

from pipeline.review import remote

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.review.repro [--check] [--timeout S]``; returns the exit status (dvc repro's)."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.review.repro", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only fetch and say whether the remote answers (exit 0/1)")
    parser.add_argument("--timeout", type=float, default=remote.FETCH_TIMEOUT, help="seconds for the fetch (%(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = Path.cwd()
    found, problem = remote.usable(root, timeout=args.timeout)
    log.info("%s", remote.message(found, problem, "the workspace"))
    if args.check:
        return 0 if problem is None else 1
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # the venv's dvc
    return subprocess.call(["dvc", "repro", *(["--pull"] if problem is None else [])], cwd=root, env=env)


if __name__ == "__main__":
    sys.exit(main())
