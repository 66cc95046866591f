"""The stack's services as data: the command line, environment and readiness probe of each, built from ports and secrets.

Pure functions, so the command lines are unit-tested without starting
anything; :mod:`pipeline.stack.procs` starts and stops what they describe.
Every server binds 127.0.0.1 only.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.stack.layout import ADMIN, Layout, dask_address, s3_address

DATABASES = ("mlflow", "mlflow_auth")  # the tracking store; the accounts and permissions of basic-auth


@dataclass(frozen=True)
class Service:
    """One long-running process of the stack."""

    name: str
    argv: list[str]
    ports: tuple[int, ...]  # what it listens on (all must be free before it starts)
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    stop_signal: str = "SIGTERM"  # what asks it to stop; SIGKILL follows after ``grace`` seconds
    grace: float = 10.0
    binary: str = ""  # a word of its command line that a live process of this service shows (tells a reused PID apart)

    def __post_init__(self) -> None:
        if not self.binary:
            object.__setattr__(self, "binary", Path(self.argv[0]).name)


def postgres_bindir() -> Path:
    """The folder holding ``initdb`` and ``postgres`` (Debian keeps them in /usr/lib/postgresql/<major>/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    which = shutil.which("postgres")
    if which:
        return Path(which).parent
    raise PipelineError("PostgreSQL not found (no /usr/lib/postgresql/*/bin/postgres, none on PATH): apt-get install postgresql")


def as_postgres_user(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the ``postgres`` account."""
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"  # root's PATH has /usr/sbin; a bare environment may not
    return [runuser, "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def initdb_argv(bindir: Path, data: Path, password_file: Path) -> list[str]:
    """Create the cluster: superuser ``mlflow`` with a password, password auth on TCP, no local trust."""
    return as_postgres_user(
        [
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "mlflow",
            f"--pwfile={password_file}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--no-instructions",
        ]
    )


def postgres(layout: Layout, ports: Mapping[str, int], bindir: Path) -> Service:
    argv = [
        str(bindir / "postgres"),
        "-D",
        str(layout.data("postgres") / "data"),
        "-p",
        str(ports["postgres"]),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "unix_socket_directories=",  # TCP on loopback only: no socket file in a shared /var/run
    ]
    # SIGINT is PostgreSQL's "fast" shutdown (SIGTERM waits for every client to disconnect)
    return Service("postgres", as_postgres_user(argv), (ports["postgres"],), stop_signal="SIGINT", binary="postgres")


def database_uri(ports: Mapping[str, int], secret: Mapping[str, str], database: str) -> str:
    # psycopg2 named explicitly: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which is not installed
    return f"postgresql+psycopg2://mlflow:{secret['postgres_password']}@127.0.0.1:{ports['postgres']}/{database}"


def s3(layout: Layout, ports: Mapping[str, int]) -> Service:
    argv = [
        str(Path(sys.executable).parent / "weed"),
        "server",
        f"-dir={layout.data('s3')}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={ports['weed_master']}",
        f"-master.port.grpc={ports['weed_master_grpc']}",
        f"-volume.port={ports['weed_volume']}",
        f"-volume.port.grpc={ports['weed_volume_grpc']}",
        f"-filer.port={ports['weed_filer']}",
        f"-filer.port.grpc={ports['weed_filer_grpc']}",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3_grpc']}",
        "-s3.port.iceberg=0",  # both default to fixed ports (8181, 9101): off, so two stacks never collide
        "-s3.port.lance=0",
        f"-s3.config={layout.data('s3') / 's3.json'}",
        "-metricsPort=0",
        "-master.volumeSizeLimitMB=256",  # the default 30 GB preallocation per volume would not fit a laptop's disk
        "-volume.max=0",
    ]
    listens = tuple(ports[k] for k in ports if k == "s3" or k.startswith(("s3_", "weed_")))
    # SeaweedFS ignores SIGTERM for ~20 s; what it acknowledged is on disk already, so SIGKILL soon
    return Service("s3", argv, listens, binary="weed", grace=2.0)


def s3_identities(secret: Mapping[str, str]) -> dict:
    """SeaweedFS's S3 config: one identity with the generated keys; anonymous requests are refused."""
    return {
        "identities": [
            {
                "name": "pipeline",
                "credentials": [{"accessKey": secret["s3_access_key"], "secretKey": secret["s3_secret_key"]}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }


def auth_ini(ports: Mapping[str, int], secret: Mapping[str, str]) -> str:
    """basic-auth's config: accounts in PostgreSQL, everyone may read, only owners and grantees may write."""
    return (
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {database_uri(ports, secret, 'mlflow_auth')}\n"
        f"admin_username = {ADMIN}\n"
        f"admin_password = {secret['admin_password']}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # a password check is a PBKDF2 hash (~0.3 s a request on 2 cores): remember a good one for a minute, so an
        # epoch's logging is not dominated by it; a changed password reaches the other worker within that minute
        "auth_cache_ttl_seconds = 60\n"
    )


def mlflow(layout: Layout, ports: Mapping[str, int], secret: Mapping[str, str]) -> Service:
    argv = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        database_uri(ports, secret, "mlflow"),
        "--artifacts-destination",
        "s3://mlflow",  # proxied: clients upload through the server and need no S3 keys
        "--host",
        "127.0.0.1",
        "--port",
        str(ports["mlflow"]),
        "--workers",
        "2",
        "--app-name",
        "basic-auth",
    ]
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(layout.data("mlflow") / "basic_auth.ini"),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secret["flask_secret_key"],
        "MLFLOW_S3_ENDPOINT_URL": s3_address(ports),
        "AWS_ACCESS_KEY_ID": secret["s3_access_key"],
        "AWS_SECRET_ACCESS_KEY": secret["s3_secret_key"],
        "AWS_DEFAULT_REGION": "us-east-1",
        # otherwise 7 job-consumer processes of ~240 MB each, for a feature the pipeline does not use
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    return Service("mlflow", argv, (ports["mlflow"],), env=env, cwd=layout.data("mlflow"), binary="mlflow")


def dask_scheduler(ports: Mapping[str, int]) -> Service:
    argv = [str(Path(sys.executable).parent / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(ports["dask"])]
    return Service("dask", [*argv, "--no-dashboard"], (ports["dask"],), binary="dask")


def thread_env(workers: int, cores: int | None = None) -> dict[str, str]:
    """TensorFlow's and OpenMP's pool sizes for one of ``workers`` processes sharing the cores: no oversubscription.

    Left alone, each experiment's TensorFlow sizes its pools to every core, and
    two experiments on two cores each run twice the threads there are cores.
    """
    share = str(max(1, (cores or os.cpu_count() or 1) // max(1, workers)))
    return {"TF_NUM_INTRAOP_THREADS": share, "TF_NUM_INTEROP_THREADS": share, "OMP_NUM_THREADS": share}


def dask_workers(layout: Layout, ports: Mapping[str, int], workers: int) -> Service:
    """``workers`` worker processes of one thread each (one experiment at a time), the cores shared out between them."""
    argv = [
        str(Path(sys.executable).parent / "dask"),
        "worker",
        dask_address(ports),
        "--host",
        "127.0.0.1",
        "--nworkers",
        str(workers),
        "--nthreads",
        "1",
        "--no-dashboard",
        "--local-directory",
        str(layout.data("dask")),
    ]
    return Service("dask_workers", argv, (), env=thread_env(workers), cwd=layout.data("dask"), binary="dask")
