"""Bring the team stack up and down, and say what runs: PostgreSQL, SeaweedFS (S3), the MLflow server, Dask.

``up`` is idempotent: a service that runs is left alone, one that does not is
started and awaited, and first-start work (the database cluster, the buckets,
the shared experiments) happens only when missing. Stopping and starting again
keeps every run, artifact, user and object: they live in the data folders.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline import files
from pipeline.errors import PipelineError
from pipeline.stack import accounts, procs, services
from pipeline.stack.layout import (
    BUCKETS,
    Layout,
    client_env,
    dask_address,
    load_secrets,
    resolve_ports,
    s3_address,
    tracking_address,
    write_env,
)
from pipeline.stack.services import Service

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stack:
    """One stack folder with its ports, secrets and the services they define."""

    layout: Layout
    ports: dict[str, int]
    secret: dict[str, str]
    workers: int

    def services(self) -> list[Service]:
        """In start order; stopping goes the other way."""
        return [
            services.postgres(self.layout, self.ports, services.postgres_bindir()),
            services.s3(self.layout, self.ports),
            services.mlflow(self.layout, self.ports, self.secret),
            services.dask_scheduler(self.ports),
            services.dask_workers(self.layout, self.ports, self.workers),
        ]


def open_stack(root: Path, overrides: Mapping[str, int] | None = None, free: bool = False, workers: int | None = None) -> Stack:
    """The stack in ``root``: ports chosen on first use and kept, secrets generated on first use and kept.

    ``workers`` (default: as last time, else 2) is how many Dask worker processes ``up`` starts.
    """
    layout = Layout(root)
    saved = json.loads(layout.config.read_text()) if layout.config.exists() else {}
    ports = resolve_ports(saved.get("ports"), overrides or {}, free)
    workers = workers or saved.get("workers", 2)
    files.write_json(layout.config, {"ports": ports, "workers": workers})
    return Stack(layout, ports, load_secrets(layout), workers)


def _connect_postgres(stack: Stack, database: str, timeout: int = 5):  # noqa: ANN202 - a psycopg2 connection
    import psycopg2

    uri = services.database_uri(stack.ports, stack.secret, database).replace("postgresql+psycopg2://", "postgresql://")
    return psycopg2.connect(uri, connect_timeout=timeout)


def _postgres_ready(stack: Stack) -> Callable[[], bool]:
    import psycopg2

    def ready() -> bool:
        try:
            _connect_postgres(stack, "postgres", timeout=2).close()
        except psycopg2.OperationalError:
            return False
        return True

    return ready


def _init_postgres(stack: Stack) -> None:
    """initdb on first start (as the ``postgres`` account when root), with the generated password; never again."""
    data = stack.layout.data("postgres") / "data"
    if (data / "PG_VERSION").exists():
        return
    data.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0 and subprocess.run(services.as_postgres_user(["test", "-x", str(data.parent)])).returncode:
        raise PipelineError(
            f"PostgreSQL runs as the 'postgres' account, which cannot reach {data.parent} (a folder above it is private): "
            "put the stack in a folder others may traverse (`stack --dir DIR up`)"
        )
    with tempfile.NamedTemporaryFile("w", dir=data.parent, delete=False) as pwfile:
        pwfile.write(stack.secret["postgres_password"] + "\n")
    try:
        if os.geteuid() == 0:
            for path in (data.parent, data, Path(pwfile.name)):
                shutil.chown(path, "postgres", "postgres")
        os.chmod(pwfile.name, 0o600)
        argv = services.initdb_argv(services.postgres_bindir(), data, Path(pwfile.name))
        out = stack.layout.log("postgres")
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("ab") as logfile:
            done = subprocess.run(argv, cwd=data.parent, stdout=logfile, stderr=subprocess.STDOUT, timeout=120)
        if done.returncode != 0:
            shutil.rmtree(data, ignore_errors=True)
            raise PipelineError(f"initdb failed (exit {done.returncode}): see {out}")
    finally:
        Path(pwfile.name).unlink(missing_ok=True)


def _create_databases(stack: Stack) -> None:
    conn = _connect_postgres(stack, "postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        for name in services.DATABASES:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()


def _s3_client(stack: Stack):  # noqa: ANN202 - a boto3 S3 client
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=s3_address(stack.ports),
        aws_access_key_id=stack.secret["s3_access_key"],
        aws_secret_access_key=stack.secret["s3_secret_key"],
        region_name="us-east-1",
        config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}),
    )


def _s3_ready(stack: Stack) -> Callable[[], bool]:
    from botocore.exceptions import BotoCoreError, ClientError

    client = _s3_client(stack)

    def ready() -> bool:
        try:
            client.list_buckets()
        except (BotoCoreError, ClientError):
            return False
        return True

    return ready


def _create_buckets(stack: Stack) -> None:
    client = _s3_client(stack)
    have = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
    for bucket in BUCKETS:
        if bucket not in have:
            client.create_bucket(Bucket=bucket)


def _http_ok(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return answer.status == 200
        except (OSError, urllib.error.URLError):
            return False

    return ready


def _port_open(port: int) -> Callable[[], bool]:
    from pipeline.stack.layout import port_in_use

    return lambda: port_in_use(port)


def _workers_ready(stack: Stack) -> Callable[[], bool]:
    def ready() -> bool:
        from distributed import Client

        try:
            with Client(dask_address(stack.ports), timeout=3) as client:
                return len(client.scheduler_info(n_workers=-1)["workers"]) >= stack.workers
        except OSError:
            return False

    return ready


def up(stack: Stack, shared: accounts.Shared) -> None:
    """Start what is not running, in order, each awaited; then the buckets, databases, shared resources and ``env``."""
    postgres, s3, mlflow, scheduler, workers = stack.services()
    _init_postgres(stack)
    procs.start(stack.layout, postgres, _postgres_ready(stack), timeout=60)
    _create_databases(stack)
    files.write_text(stack.layout.data("s3") / "s3.json", json.dumps(services.s3_identities(stack.secret)), mode=0o600)
    procs.start(stack.layout, s3, _s3_ready(stack), timeout=60)
    _create_buckets(stack)
    files.write_text(stack.layout.data("mlflow") / "basic_auth.ini", services.auth_ini(stack.ports, stack.secret), mode=0o600)
    procs.start(stack.layout, mlflow, _http_ok(tracking_address(stack.ports) + "/health"), timeout=120)
    stack.layout.data("dask").mkdir(parents=True, exist_ok=True)
    procs.start(stack.layout, scheduler, _port_open(stack.ports["dask"]), timeout=60)
    procs.start(stack.layout, workers, _workers_ready(stack), timeout=90)
    accounts.share(tracking_address(stack.ports), stack.secret, shared, accounts.members(stack.layout))
    write_env(stack.layout, client_env(stack.ports, stack.secret))


def down(stack: Stack) -> list[str]:
    """Stop every running service, last started first; the names of those stopped."""
    return [service.name for service in reversed(stack.services()) if procs.stop(stack.layout, service)]


def status(stack: Stack) -> list[dict[str, str]]:
    """One row per service: state, pid, address, resident memory of its process group, since when."""
    addresses = {
        "postgres": f"127.0.0.1:{stack.ports['postgres']}",
        "s3": s3_address(stack.ports),
        "mlflow": tracking_address(stack.ports),
        "dask": dask_address(stack.ports),
        "dask_workers": f"{stack.workers} x 1 thread",
    }
    rows = []
    for service in stack.services():
        pid = procs.running_pid(stack.layout, service)
        rows.append(
            {
                "service": service.name,
                "state": "running" if pid else "stopped",
                "pid": str(pid or "-"),
                "address": addresses[service.name],
                "memory": f"{procs.group_rss_mb(pid):.0f} MB" if pid else "-",
                "since": procs.since(stack.layout, service.name) if pid else "-",
            }
        )
    return rows
