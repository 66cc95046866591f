"""The stack's state folder: ports, secrets, the env file to ``source``, PID files and logs.

Everything lives under one folder (``.stack/`` in the project root, git-ignored):
``stack.json`` (the ports, chosen once so that restarts keep every address),
``secrets.json`` (mode 0600, generated on first start), ``env`` (mode 0600:
the exports a shell sources), ``run/<service>.pid``, ``logs/<service>.log``,
and each service's data folder.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline import files
from pipeline.errors import PipelineError

# Loopback ports used unless `stack up --free-ports` or `--port NAME=N` says otherwise. The S3 port is the one the
# committed .dvc/config names; SeaweedFS's internal servers each need a port and a gRPC port, so all are listed.
DEFAULT_PORTS: dict[str, int] = {
    "postgres": 15432,
    "s3": 8333,
    "s3_grpc": 18333,
    "weed_master": 9333,
    "weed_master_grpc": 19333,
    "weed_volume": 18080,
    "weed_volume_grpc": 28080,
    "weed_filer": 18888,
    "weed_filer_grpc": 28888,
    "mlflow": 5050,
    "dask": 8786,
}
ADMIN = "admin"  # the MLflow account `stack up` creates; `stack user add` makes the others
BUCKETS = ("mlflow", "dvc")  # the server's proxied artifacts; the DVC remote (s3://dvc in .dvc/config)


@dataclass(frozen=True)
class Layout:
    """Paths inside one stack folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "stack.json"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets.json"

    @property
    def env(self) -> Path:
        return self.root / "env"

    @property
    def users(self) -> Path:
        return self.root / "users.json"

    def pid(self, service: str) -> Path:
        return self.root / "run" / f"{service}.pid"

    def log(self, service: str) -> Path:
        return self.root / "logs" / f"{service}.log"

    def data(self, service: str) -> Path:
        return self.root / service


def free_port() -> int:
    """A TCP port nothing listens on at this moment (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def parse_port_overrides(items: list[str]) -> dict[str, int]:
    """``["mlflow=5051"]`` -> ``{"mlflow": 5051}``; an unknown name or a bad number fails naming it and the choices."""
    out: dict[str, int] = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in DEFAULT_PORTS:
            raise PipelineError(f"--port {item}: unknown port {name!r}; choices: {', '.join(DEFAULT_PORTS)}")
        if not value.isdigit() or not 0 < int(value) < 65536:
            raise PipelineError(f"--port {item}: {value!r} is not a port number (1-65535)")
        out[name] = int(value)
    return out


def resolve_ports(saved: Mapping[str, int] | None, overrides: Mapping[str, int], free: bool) -> dict[str, int]:
    """The stack's ports: those ``saved`` at its first start, else defaults (or free ones), with ``overrides`` on top."""
    ports = dict(saved or ({name: free_port() for name in DEFAULT_PORTS} if free else DEFAULT_PORTS))
    ports.update(overrides)
    if len(set(ports.values())) != len(ports):
        raise PipelineError(f"two services of the stack would share a port: {ports}")
    return ports


def read_env(path: Path) -> dict[str, str]:
    """The variables an env file written by :func:`write_env` exports."""
    return dict(re.findall(r"^export (\w+)='([^']*)'$", path.read_text(), re.M))


def load_secrets(layout: Layout) -> dict[str, str]:
    """The stack's secrets, generated on first use into a mode-0600 file and kept from then on."""
    if layout.secrets.exists():
        return json.loads(layout.secrets.read_text())
    values = {
        "postgres_password": secrets.token_urlsafe(24),
        "s3_access_key": "AK" + secrets.token_hex(9).upper(),
        "s3_secret_key": secrets.token_urlsafe(30),
        "flask_secret_key": secrets.token_hex(32),
        "admin_password": secrets.token_urlsafe(18),
    }
    files.write_text(layout.secrets, json.dumps(values, indent=2) + "\n", mode=0o600)
    return values


def tracking_address(ports: Mapping[str, int]) -> str:
    return f"http://127.0.0.1:{ports['mlflow']}"


def s3_address(ports: Mapping[str, int]) -> str:
    return f"http://127.0.0.1:{ports['s3']}"


def dask_address(ports: Mapping[str, int]) -> str:
    return f"tcp://127.0.0.1:{ports['dask']}"


def client_env(ports: Mapping[str, int], secret: Mapping[str, str]) -> dict[str, str]:
    """What a client of the stack needs: the tracking server and account, the S3 keys for DVC, the Dask scheduler."""
    return {
        "MLFLOW_TRACKING_URI": tracking_address(ports),
        "MLFLOW_TRACKING_USERNAME": ADMIN,
        "MLFLOW_TRACKING_PASSWORD": secret["admin_password"],
        "AWS_ACCESS_KEY_ID": secret["s3_access_key"],
        "AWS_SECRET_ACCESS_KEY": secret["s3_secret_key"],
        "PIPELINE_S3_ENDPOINT": s3_address(ports),
        "DASK_SCHEDULER_ADDRESS": dask_address(ports),
    }


def write_env(layout: Layout, env: Mapping[str, str]) -> None:
    """``.stack/env``: one ``export`` line per variable (mode 0600: it holds the admin password and the S3 keys)."""
    lines = ["# written by `python -m pipeline stack up`; `source` it (members: your own account in MLFLOW_TRACKING_*)"]
    lines += [f"export {key}='{value}'" for key, value in env.items()]
    files.write_text(layout.env, "\n".join(lines) + "\n", mode=0o600)
