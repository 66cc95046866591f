"""Per-epoch checkpoints: train and pretrain resume after a kill at the epoch they reached.

A checkpoint folder (``checkpoints/<stage>/<key>/``, outside DVC's outputs)
holds ``state.json`` (:class:`State`: the MLflow run, the phase, the next
epoch, the history so far, early stopping's counters) and the ``.npz`` it
names: every model variable, the optimizer's (its step count drives the
learning-rate schedule) and the random layers' seed states, which Keras'
``save_weights`` leaves out. The npz is written first and ``state.json``
last, each by an atomic rename, so a kill at any moment leaves a consistent
pair. The key digests everything that defines the run (:func:`run_key`): a
changed variant, input or model code gets a new folder and the stale one is
removed (:func:`folder`), so it never resumes stale state. The data order and
augmentation of an epoch depend on (seed, epoch) alone
(:func:`pipeline.training.inputs.epoch_plan`), so a resumed run computes
what an uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import files
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

STATE = "state.json"
HASHED_WHOLE = 16 << 20  # bigger input files (image shards) are identified by name and size: hashing them costs minutes
CODE = Path(__file__).resolve().parents[1]  # the pipeline package: weights saved by other model code may not fit
CODE_DIRS = ("models", "training")


@dataclasses.dataclass
class State:
    """Where a stage stands after its last finished epoch."""

    run_id: str | None
    phase: str  # "fit", or transfer learning's second phase "finetune"
    epoch: int  # the next epoch to run, numbered across phases
    history: dict[str, list[float]]  # every finished epoch of every phase
    seconds: float  # training time so far
    start: int = 0  # the phase's first epoch
    done: bool = False  # the phase ended and its final weights (early stopping's best) are saved
    stopped: bool = False  # early stopping ended the phase
    early_stopping: dict[str, Any] | None = None
    weights: str = ""  # the npz beside state.json


def identity(path: Path) -> Any:
    """What identifies an input: a small file's sha256, a big one's size, a folder's files (sorted)."""
    if path.is_dir():
        return {p.relative_to(path).as_posix(): identity(p) for p in sorted(path.rglob("*")) if p.is_file()}
    if not path.is_file():
        return None
    size = path.stat().st_size
    return hashlib.sha256(path.read_bytes()).hexdigest() if size <= HASHED_WHOLE else size


def code_digest() -> str:
    """sha256 of the model and training code (``pipeline/models``, ``pipeline/training``)."""
    digest = hashlib.sha256()
    for folder in CODE_DIRS:
        for path in sorted((CODE / folder).rglob("*.py")):
            digest.update(path.relative_to(CODE).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def run_key(config: Mapping[str, Any], inputs: Iterable[Path]) -> str:
    """16 hex digits naming one run: the resolved config, the inputs' identities and the model code."""
    blob = json.dumps(
        {"config": config, "inputs": {str(p): identity(p) for p in inputs}, "code": code_digest()}, sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def folder(root: Path, key: str) -> Path:
    """``root/key``, after removing every other key's folder under ``root`` (a changed run never resumes them)."""
    if root.is_dir():
        for stale in root.iterdir():
            if stale.name != key:
                log.info("removing the stale checkpoint %s", stale)
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    return root / key


def clear(root: Path) -> None:
    """Remove the stage's checkpoints (it succeeded), and ``checkpoints/`` when no other stage has any."""
    shutil.rmtree(root, ignore_errors=True)
    try:
        root.parent.rmdir()
    except OSError:  # another stage's checkpoints are there (or it is gone already)
        pass


def load(where: Path) -> State | None:
    """The checkpoint in ``where``, or None (none yet, or an unreadable one, which is then ignored)."""
    path = where / STATE
    if not path.is_file():
        return None
    try:
        state = State(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        log.warning("%s: unreadable (%s); training from the first epoch", path, exc)
        return None
    if not (where / state.weights).is_file():
        log.warning("%s: its weights %s are missing; training from the first epoch", path, state.weights)
        return None
    return state


def _variables(model: Any) -> list:
    """The model's variables (seed states included), then its optimizer's (built if the optimizer has not stepped yet)."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    return [*model.variables, *model.optimizer.variables]


def save(where: Path, state: State, model: Any, best: list[np.ndarray] | None = None) -> None:
    """Write ``model``'s variables (and early stopping's ``best`` weights) and ``state``; drop the previous npz."""
    where.mkdir(parents=True, exist_ok=True)
    arrays = {f"v{i}": np.asarray(v.numpy()) for i, v in enumerate(_variables(model))}
    arrays.update({f"best{i}": w for i, w in enumerate(best or [])})
    name = f"{state.phase}-{state.epoch:04d}{'-done' if state.done else ''}.npz"
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=where)
    with os.fdopen(fd, "wb") as out:
        np.savez(out, **arrays)
    os.replace(tmp, where / name)
    files.write_json(where / STATE, dataclasses.asdict(dataclasses.replace(state, weights=name)))
    for old in where.iterdir():  # the previous epoch's npz, and temporaries a kill left
        if old.name not in (name, STATE):
            old.unlink()


def restore(model: Any, where: Path, state: State) -> list[np.ndarray] | None:
    """Assign the saved variables to ``model`` (compiled, of the state's phase); return early stopping's best weights."""
    with np.load(where / state.weights) as saved:
        variables = _variables(model)
        count = sum(k.startswith("v") for k in saved.files)
        shapes = [tuple(saved[f"v{i}"].shape) for i in range(count)]
        if shapes != [tuple(v.shape) for v in variables]:
            raise PipelineError(
                f"{where / state.weights}: holds {count} variables that do not fit the model's {len(variables)};"
                f" remove {where} to train from the first epoch"
            )
        for i, variable in enumerate(variables):
            variable.assign(saved[f"v{i}"])
        best = [saved[f"best{i}"] for i in range(sum(k.startswith("best") for k in saved.files))]
    return best or None


def early_stopping_state(callback: Any) -> dict[str, Any] | None:
    """The counters of a Keras ``EarlyStopping`` (None: no early stopping)."""
    if callback is None:
        return None
    best = callback.best
    return {
        "wait": int(callback.wait),
        "stopped_epoch": int(callback.stopped_epoch),
        "best": None if best is None else float(best),
        "best_epoch": int(callback.best_epoch),
    }


def callback(where: Path, state: State, early: Any = None, best: list[np.ndarray] | None = None):  # noqa: ANN201
    """A Keras callback saving a checkpoint after each epoch and at the end of the phase.

    ``state`` is where the phase starts (its ``history`` the earlier
    epochs'); ``early`` the phase's ``EarlyStopping`` callback, whose counters
    (and ``best`` weights) a resumed phase gets back after Keras reset them.
    Put it after ``early`` and before the MLflow epoch logger: the checkpoint
    then holds an epoch before MLflow does, and a resumed stage logs the
    epochs MLflow missed (``runs.log_history``), so none is lost or logged twice.
    """
    import keras

    current = dataclasses.replace(state, history={k: list(v) for k, v in state.history.items()})
    started = time.perf_counter()

    def begin(logs: Any) -> None:
        if early is not None and state.early_stopping:
            for k, v in state.early_stopping.items():
                setattr(early, k, v)
            early.best_weights = best

    def write(model: Any, **changes: Any) -> None:
        current.seconds = state.seconds + time.perf_counter() - started
        current.early_stopping = early_stopping_state(early)
        for k, v in changes.items():
            setattr(current, k, v)
        save(where, current, model, early.best_weights if early is not None else None)

    def epoch_end(epoch: int, logs: Any) -> None:
        for k, v in (logs or {}).items():
            current.history.setdefault(k, []).append(float(v))
        write(cb.model, epoch=epoch + 1, stopped=bool(cb.model.stop_training))

    cb = keras.callbacks.LambdaCallback(
        on_train_begin=begin, on_epoch_end=epoch_end, on_train_end=lambda logs: write(cb.model, done=True)
    )
    return cb
