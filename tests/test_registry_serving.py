"""The registry end to end: tiny pets (SeedCNN, subclassed) and houses (three inputs) variants trained, evaluated,
registered on a temp sqlite store; ``models:/<dataset>@champion`` loaded outside the repository and served over HTTP.

"Outside the repository": a subprocess whose cwd is an empty folder, with
PYTHONPATH cleared and the venv's editable install of the project switched off
(its finder removed from ``sys.meta_path``), so ``pipeline`` is importable only
from the model's own ``code/``. The keras flavor, which carries no code, fails
there (Keras cannot rebuild SeedCNN or the flip-TTA layers: the control); the pyfunc
flavor loads and predicts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pipeline import predict, serving
from tests.pipeline_project import REPO, trained_project

pytestmark = pytest.mark.slow

TINY = {
    "tiny_sub": {
        "dataset": "pets",
        "model": "cnn_subclassed",
        "augment": "none",
        "width": 0.25,
        "tta": "flip",  # the wrap layers travel too
        "train": {"epochs": 1, "batch_size": 64},
    },
    "tiny_houses": {"dataset": "houses", "model": "mixed_inputs", "augment": "none", "train": {"epochs": 1, "batch_size": 16}},
}

OUTSIDE = """
import importlib.util, json, sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
assert importlib.util.find_spec("pipeline") is None, "pipeline is importable without the model's code"
import mlflow, numpy as np
uri = sys.argv[1]
try:
    mlflow.keras.load_model(uri)
    keras_flavor = "loaded"
except Exception as exc:
    keras_flavor = str(exc)
model = mlflow.pyfunc.load_model(uri)
local = mlflow.artifacts.download_artifacts(uri)
example = mlflow.models.Model.load(local).load_input_example(local)
import pipeline
print(json.dumps({"keras_flavor": keras_flavor, "pipeline": pipeline.__file__,
                  "prediction": np.asarray(model.predict(example)).ravel().tolist()}))
"""


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    steps = [*(("train", [name]) for name in TINY), ("evaluate", []), ("register", [])]
    parts = ("data/prepared", "data/stats", "data/raw/pets")
    return trained_project(tmp_path_factory, "registry", parts, {"variants": TINY}, steps)


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    path = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # an activated venv: serve runs uvicorn
    return {**env, "PATH": path, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db", "MLFLOW_DISABLE_TELEMETRY": "true"}


def _example(root: Path, uri: str) -> tuple[dict, dict[str, np.ndarray]]:
    """The model's logged input example: as the JSON request body, and as arrays."""
    import mlflow
    from mlflow.models import Model

    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    local = Path(mlflow.artifacts.download_artifacts(uri))
    stored = json.loads((local / "input_example.json").read_text())  # the named arrays, as lists
    return {"inputs": stored}, Model.load(str(local / "MLmodel")).load_input_example(str(local))


def test_the_decisions_are_written(registered: Path) -> None:
    for dataset, variant in (("pets", "tiny_sub"), ("houses", "tiny_houses")):
        decision = json.loads((registered / "reports/register" / f"{dataset}.json").read_text())
        assert decision["moved"] and decision["challenger"] == variant and decision["version"] == "1"


@pytest.mark.parametrize("dataset", ["pets", "houses"])
def test_the_champion_loads_and_predicts_outside_the_repository(registered: Path, tmp_path: Path, dataset: str) -> None:
    uri = f"models:/{dataset}@champion"
    done = subprocess.run(
        [sys.executable, "-c", OUTSIDE, uri], cwd=tmp_path, env=_env(registered), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert not Path(out["pipeline"]).resolve().is_relative_to(REPO) and "/code/pipeline/" in out["pipeline"]
    if dataset == "pets":  # the control: the keras flavor carries no code (the flip-TTA wrapper fails first)
        assert "could not be deserialized" in out["keras_flavor"] or "Could not locate class" in out["keras_flavor"]
    import mlflow

    local = mlflow.artifacts.download_artifacts(uri)
    expected = serving.load(local).predict(_example(registered, uri)[1]).ravel()
    np.testing.assert_allclose(out["prediction"], expected, rtol=1e-5)


def test_predict_cli_takes_the_champion(registered: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(registered)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{registered}/mlflow.db")
    photos = sorted((registered / "data/raw/pets").rglob("*.jpg"))[:3]
    runs = {}
    for flag, value in (("--model", "models:/pets@champion"), ("--variant", "tiny_sub")):
        out = tmp_path / f"{flag[2:]}.json"
        predict.main([flag, value, "--format", "json", "--output", str(out), *map(str, photos)])
        runs[flag] = json.loads(out.read_text())
    assert runs["--model"]["variant"] == "tiny_sub" and runs["--model"]["predicted"] == 3
    assert runs["--model"]["results"] == runs["--variant"]["results"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, body: dict) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # the server's message, not only its status
        pytest.fail(f"POST /invocations: {exc.code}: {exc.read().decode()[:3000]}")


def _wait(port: int, server: subprocess.Popen, log: Path, deadline: float) -> None:
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow models serve exited {server.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return
        except OSError:
            time.sleep(1)
    pytest.fail(f"mlflow models serve did not answer /ping on port {port}: {log.read_text()[-3000:]}")


def test_mlflow_models_serve_answers_for_an_image_and_a_houses_champion(registered: Path, tmp_path: Path) -> None:
    servers: dict[str, tuple[subprocess.Popen, int, Path]] = {}
    try:
        for dataset in ("pets", "houses"):
            port, log = _free_port(), tmp_path / f"{dataset}.log"
            command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{dataset}@champion"]
            command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
            with log.open("w") as sink:
                server = subprocess.Popen(
                    command, cwd=tmp_path, env=_env(registered), stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
                )
            servers[dataset] = (server, port, log)
        deadline = time.monotonic() + 240
        for dataset, (server, port, log) in servers.items():
            _wait(port, server, log, deadline)
            body, arrays = _example(registered, f"models:/{dataset}@champion")
            answer = np.asarray(_post(port, body)["predictions"], dtype=np.float64).ravel()
            import mlflow

            expected = serving.load(mlflow.artifacts.download_artifacts(f"models:/{dataset}@champion")).predict(arrays).ravel()
            np.testing.assert_allclose(answer, expected, rtol=1e-5)
            assert answer.shape == (1,) and np.isfinite(answer).all()  # one example, one output (a tiny model's price may be < 0)
            if dataset == "pets":
                assert 0 <= answer[0] <= 1
    finally:
        for server, _, _ in servers.values():
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
                    server.wait()
