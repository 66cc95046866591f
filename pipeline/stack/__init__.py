"""``python -m pipeline stack up|down|status|user add NAME``: the team stack on this host's loopback.

PostgreSQL holds MLflow's runs and accounts, SeaweedFS serves S3 (the
server's artifacts and the DVC remote), the MLflow server (basic-auth) is
what everyone logs to, and a Dask scheduler with workers runs sweeps. State
lives in ``.stack/`` of the project (``--dir`` elsewhere); ``up`` writes
``.stack/env`` for ``source``.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.stack.accounts import Shared

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=None, help="the stack's folder (default: .stack/ in the project root)")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="start what is not running (a no-op when all runs)")
    start.add_argument("--port", action="append", default=[], metavar="NAME=N", help="a port of the first start (kept after)")
    start.add_argument("--free-ports", action="store_true", help="on the first start, take free ports instead of the defaults")
    start.add_argument("--workers", type=int, default=None, help="Dask worker processes (one thread each; default 2)")
    commands.add_parser("down", help="stop every service (data is kept)")
    commands.add_parser("status", help="what runs, where, since when")
    user = commands.add_parser("user", help="MLflow accounts").add_subparsers(dest="action", required=True)
    user.add_parser("add", help="create an account; its password is printed once").add_argument("name")
    return parser


def _shared() -> Shared:
    """What every member may write to: an experiment per dataset and pretraining's, a registered model per dataset and variant."""
    from pipeline import config, mlflow_registry, tracking

    variants = config.load(tracking.project_root() / "params.yaml").variants.values()
    models = [*config.DATASETS, *(mlflow_registry.variant_name(v.dataset, v.name) for v in variants)]
    return Shared((*config.DATASETS, tracking.PRETRAIN_EXPERIMENT), tuple(models))


def _point_dvc_remote(endpoint: str) -> None:
    """When the stack's S3 is not where the committed .dvc/config expects it, say so in .dvc/config.local."""
    from pipeline.tracking import project_root

    root = project_root()
    if not (root / ".dvc").is_dir():
        return
    committed = subprocess.run(
        [sys.executable, "-m", "dvc", "config", "--project", "remote.team.endpointurl"], cwd=root, capture_output=True, text=True
    ).stdout.strip()
    if committed != endpoint:
        dvc = [sys.executable, "-m", "dvc"]  # the venv's, whether or not it is on PATH
        subprocess.run([*dvc, "remote", "modify", "--local", "team", "endpointurl", endpoint], cwd=root, check=True)
        log.info("DVC remote 'team' -> %s (in %s)", endpoint, root / ".dvc" / "config.local")


def main(argv: list[str] | None = None) -> None:
    """Run one stack command."""
    from pipeline.stack import accounts, control
    from pipeline.stack.layout import parse_port_overrides, s3_address, tracking_address
    from pipeline.tracking import project_root

    args = _parser().parse_args(argv)
    root = args.dir or project_root() / ".stack"
    if args.command == "up":
        stack = control.open_stack(root, parse_port_overrides(args.port), args.free_ports, args.workers)
        control.up(stack, _shared())
        _point_dvc_remote(s3_address(stack.ports))
        print(_table(control.status(stack)))
        print(f"\nsource {stack.layout.env}   # the tracking URI and account, the S3 keys for DVC, the Dask scheduler")
        return
    if not (root / "stack.json").exists():
        raise PipelineError(f"no stack in {root}: start one with `python -m pipeline stack up`")
    stack = control.open_stack(root)
    if args.command == "down":
        stopped = control.down(stack)
        print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    elif args.command == "status":
        print(_table(control.status(stack)))
    else:
        uri = tracking_address(stack.ports)
        password = accounts.add_user(stack.layout, uri, stack.secret, args.name, _shared())
        print(f"user {args.name} on {uri}\npassword: {password}   (shown once; it is not stored)")
        print(f"export MLFLOW_TRACKING_USERNAME='{args.name}' MLFLOW_TRACKING_PASSWORD='{password}'")


def _table(rows: list[dict[str, str]]) -> str:
    widths = {key: max(len(key), *(len(row[key]) for row in rows)) for key in rows[0]}
    lines = ["  ".join(key.ljust(width) for key, width in widths.items())]
    lines += ["  ".join(row[key].ljust(width) for key, width in widths.items()) for row in rows]
    return "\n".join(lines)
