"""The team stack's pieces without the stack: ports, secrets, the env file, command lines, PID files and process groups.

The whole stack, started for real, is tested end to end in tests/test_team.py.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from pipeline import tracking
from pipeline.errors import PipelineError
from pipeline.stack import procs, services
from pipeline.stack.control import open_stack
from pipeline.stack.layout import (
    DEFAULT_PORTS,
    Layout,
    client_env,
    free_port,
    load_secrets,
    parse_port_overrides,
    read_env,
    resolve_ports,
    write_env,
)
from pipeline.stack.services import Service

PORTS = {name: 20000 + i for i, name in enumerate(DEFAULT_PORTS)}
SECRET = {
    "postgres_password": "pg",
    "s3_access_key": "AK",
    "s3_secret_key": "SK",
    "flask_secret_key": "fk",
    "admin_password": "ap",
}


def test_port_overrides_parse_and_name_bad_ones() -> None:
    assert parse_port_overrides(["mlflow=5051", "s3=9000"]) == {"mlflow": 5051, "s3": 9000}
    with pytest.raises(PipelineError, match=r"--port mlfow=1: unknown port 'mlfow'; choices: postgres, s3"):
        parse_port_overrides(["mlfow=1"])
    with pytest.raises(PipelineError, match=r"--port dask=99999: '99999' is not a port number"):
        parse_port_overrides(["dask=99999"])


def test_ports_are_chosen_once_and_kept(tmp_path: Path) -> None:
    first = open_stack(tmp_path / "stack", {"mlflow": 5999}, free=True).ports
    assert first["mlflow"] == 5999 and set(first) == set(DEFAULT_PORTS)
    assert open_stack(tmp_path / "stack").ports == first  # a restart keeps every address, free or not
    assert open_stack(tmp_path / "other").ports == DEFAULT_PORTS


def test_two_services_on_one_port_fail() -> None:
    with pytest.raises(PipelineError, match="two services of the stack would share a port"):
        resolve_ports(None, {"mlflow": DEFAULT_PORTS["s3"]}, free=False)


def test_secrets_are_generated_once_owner_only(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    first = load_secrets(layout)
    assert stat.S_IMODE(layout.secrets.stat().st_mode) == 0o600
    assert load_secrets(layout) == first
    assert len(set(first.values())) == len(first)  # all different, none empty
    assert all(len(value) >= 16 for value in first.values())


def test_env_file_exports_what_clients_need(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    write_env(layout, client_env(PORTS, SECRET))
    text = layout.env.read_text()
    assert stat.S_IMODE(layout.env.stat().st_mode) == 0o600
    assert f"export MLFLOW_TRACKING_URI='http://127.0.0.1:{PORTS['mlflow']}'" in text
    assert "export MLFLOW_TRACKING_PASSWORD='ap'" in text and "export AWS_SECRET_ACCESS_KEY='SK'" in text
    assert f"export DASK_SCHEDULER_ADDRESS='tcp://127.0.0.1:{PORTS['dask']}'" in text
    shell = subprocess.run(["bash", "-c", f"source {layout.env} && echo $AWS_ACCESS_KEY_ID"], capture_output=True, text=True)
    assert shell.stdout.strip() == "AK"
    assert read_env(layout.env) == client_env(PORTS, SECRET)


def test_servers_bind_loopback_only(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    pg = services.postgres(layout, PORTS, Path("/usr/lib/postgresql/15/bin"))
    assert "listen_addresses=127.0.0.1" in pg.argv and pg.stop_signal == "SIGINT"
    assert (Path(pg.argv[0]).name == "runuser" and pg.argv[1:4] == ["-u", "postgres", "--"]) == (os.geteuid() == 0)
    s3 = services.s3(layout, PORTS)
    assert "-ip.bind=127.0.0.1" in s3.argv and "-s3.port.iceberg=0" in s3.argv and "-s3.port.lance=0" in s3.argv
    assert set(s3.ports) == {PORTS[k] for k in PORTS if k == "s3" or k.startswith(("s3_", "weed_"))}
    server = services.mlflow(layout, PORTS, SECRET)
    assert server.argv[server.argv.index("--host") + 1] == "127.0.0.1"
    assert server.argv[server.argv.index("--backend-store-uri") + 1].startswith("postgresql+psycopg2://mlflow:pg@127.0.0.1:")
    assert server.argv[server.argv.index("--app-name") + 1] == "basic-auth"
    assert server.env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert server.env["MLFLOW_S3_ENDPOINT_URL"] == f"http://127.0.0.1:{PORTS['s3']}"
    for dask in (services.dask_scheduler(PORTS), services.dask_workers(layout, PORTS, 3)):
        assert dask.argv[dask.argv.index("--host") + 1] == "127.0.0.1"
    assert "--nworkers" in services.dask_workers(layout, PORTS, 3).argv


def test_workers_share_the_cores_out() -> None:
    assert services.thread_env(2, cores=2) == {
        "TF_NUM_INTRAOP_THREADS": "1",
        "TF_NUM_INTEROP_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    assert services.thread_env(1, cores=2)["TF_NUM_INTRAOP_THREADS"] == "2"
    assert services.thread_env(3, cores=2)["OMP_NUM_THREADS"] == "1"  # never 0


def test_accounts_default_to_read_only() -> None:
    ini = services.auth_ini(PORTS, SECRET)
    assert "default_permission = READ" in ini and "/mlflow_auth" in ini and "admin_password = ap" in ini


def test_s3_refuses_anonymous_requests() -> None:
    config = services.s3_identities(SECRET)
    assert [i["credentials"] for i in config["identities"]] == [[{"accessKey": "AK", "secretKey": "SK"}]]


# -- processes: a tiny real server stands in for a service ---------------------------------------------------------


def _http_service(port: int, name: str = "web", script: str | None = None) -> Service:
    argv = [sys.executable, "-c", script] if script else [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    return Service(name, argv, (port,), binary="python")


def _listening(port: int):  # noqa: ANN202
    def ready() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    return ready


def test_start_is_idempotent_and_stop_ends_the_group(tmp_path: Path) -> None:
    layout, port = Layout(tmp_path), free_port()
    # a parent with a child in its group, as the MLflow server has workers
    script = (
        "import subprocess, sys, http.server, socketserver\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        f"http.server.ThreadingHTTPServer(('127.0.0.1', {port}), http.server.SimpleHTTPRequestHandler).serve_forever()\n"
    )
    service = _http_service(port, script=script)
    try:
        pid = procs.start(layout, service, _listening(port), timeout=20)
        assert procs.start(layout, service, _listening(port), timeout=20) == pid  # starting twice is a no-op
        assert procs.group_rss_mb(pid) > 5
        members = subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True).stdout.split()
        assert len(members) == 2
    finally:
        assert procs.stop(layout, service)
    assert not layout.pid("web").exists()
    assert subprocess.run(["pgrep", "-g", str(pid)], capture_output=True).returncode == 1  # child gone too
    assert not procs.stop(layout, service)


def test_a_stale_pid_file_is_removed_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    layout, port = Layout(tmp_path), free_port()
    layout.pid("web").parent.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "60"])  # a live PID that is not the service
    layout.pid("web").write_text(f"{sleeper.pid}\n")
    service = _http_service(port)
    try:
        assert procs.running_pid(layout, service) is None
        assert "stale PID file" in caplog.text and f"pid {sleeper.pid} is not python" in caplog.text
        assert not layout.pid("web").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_port_in_use_is_named(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(PipelineError, match=rf"web: port {port} on 127.0.0.1 is in use by another process"):
            procs.start(Layout(tmp_path), _http_service(port), _listening(port), timeout=5)


def test_a_service_dying_at_start_fails_fast_naming_its_log(tmp_path: Path) -> None:
    layout, port = Layout(tmp_path), free_port()
    service = _http_service(port, script="import sys; print('no config'); sys.exit(3)")
    started = time.monotonic()
    with pytest.raises(PipelineError, match=r"web exited with code 3 while starting: see .*web\.log\nno config"):
        procs.start(layout, service, _listening(port), timeout=60)
    assert time.monotonic() - started < 10 and not layout.pid("web").exists()


def test_a_service_ignoring_sigterm_is_killed_after_its_grace(tmp_path: Path) -> None:
    layout, port = Layout(tmp_path), free_port()
    script = (
        "import signal, socket, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(300)\n"
    )
    service = Service("stubborn", [sys.executable, "-c", script], (port,), binary="python", grace=1.0)
    pid = procs.start(layout, service, _listening(port), timeout=20)
    started = time.monotonic()
    assert procs.stop(layout, service)
    assert time.monotonic() - started < 5
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, signal.SIG_DFL)


# -- the pipeline's side: a tracking server that refuses, or does not answer ----------------------------------------


class _Refuse(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(401)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_server():  # noqa: ANN201
    server = HTTPServer(("127.0.0.1", 0), _Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_wrong_credentials_name_the_server_and_the_account(refusing_server: str) -> None:
    with pytest.raises(PipelineError, match=rf"tracking server {refusing_server} refused the account 'bob' \(401 Unauthorized\)"):
        tracking.check_server(refusing_server, "bob", "wrong")
    with pytest.raises(PipelineError, match=r"needs an account \(401 Unauthorized\): set MLFLOW_TRACKING_USERNAME"):
        tracking.check_server(refusing_server, None, None)


def test_an_unreachable_or_silent_server_fails_within_the_timeout() -> None:
    port = free_port()
    with pytest.raises(PipelineError, match=rf"tracking server http://127.0.0.1:{port} is unreachable"):
        tracking.check_server(f"http://127.0.0.1:{port}", None, None)
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(PipelineError, match=rf"tracking server {uri} is unreachable \(.*timed out"):
            tracking.check_server(uri, None, None, timeout=1.0)
        assert time.monotonic() - started < 5


def test_a_local_store_is_not_probed() -> None:
    tracking.check_server("sqlite:////nonexistent/mlflow.db", None, None)


def test_commands_other_than_up_need_a_stack(tmp_path: Path) -> None:
    from pipeline.stack import main

    with pytest.raises(PipelineError, match=rf"no stack in {tmp_path}: start one with `python -m pipeline stack up`"):
        main(["--dir", str(tmp_path), "status"])


def test_the_stack_folder_is_git_ignored() -> None:
    root = Path(__file__).resolve().parents[1]
    assert "/.stack/" in (root / ".gitignore").read_text().splitlines()
    assert DEFAULT_PORTS["s3"] == 8333  # the port the committed .dvc/config names
    assert "endpointurl = http://127.0.0.1:8333" in (root / ".dvc" / "config").read_text()
