"""Stage ``register``: every evaluated variant into MLflow's model registry, and each dataset's champion.

Per variant: its run's model (the run ``evaluate`` logged the test metrics
into, found by the model file's md5) becomes a version of the registered
model ``<dataset>.<variant>``, tagged with the test metrics; a model that did
not change keeps its version. Per dataset: the best variant on the task's key
metric (``test_accuracy`` for pets, ``test_mape`` for houses) challenges the
version the alias ``champion`` of the registered model ``<dataset>`` names;
the alias moves to the challenger only when it beats the champion by more than
``review.threshold`` (relative, as the review marks a change), or when there is
none yet (:func:`decide`). The decision, with both figures, is logged on the
registered model and the challenger's run (tag ``champion.decision``) and
written to ``reports/register/<dataset>.json``, which ``report`` shows.

The decision depends on what the store held before, not only on this stage's
inputs: DVC reruns it when the models, metrics, variants or threshold change;
``python -m pipeline register`` (or ``dvc repro -f register``) registers
again, e.g. into another store.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

from pipeline import config, files, mlflow_registry, paths, tracking
from pipeline.errors import PipelineError
from pipeline.metrics import TASKS, sense

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Contender:
    """A model in the race: its variant, its figure on the key metric, its run (and registry version, when it has one)."""

    variant: str
    value: float | None
    run_id: str
    version: str | None = None


@dataclass(frozen=True)
class Decision:
    """Whether ``champion`` moves to the challenger, with both figures (what the report and the registry show)."""

    dataset: str
    metric: str
    higher_is_better: bool
    threshold: float
    challenger: str
    challenger_value: float | None
    champion: str | None  # the champion before the decision (None: there was none)
    champion_value: float | None
    champion_version: str | None
    gain: float | None  # the challenger's relative improvement over the champion (positive: better)
    moved: bool
    reason: str
    version: str | None = None  # the version models:/<dataset>@champion names after the decision


def gain(new: float, old: float, higher_is_better: bool) -> float:
    """Relative improvement of ``new`` over ``old`` (0.05: 5 % better); over a zero ``old``, +-inf or 0."""
    better = (new - old) if higher_is_better else (old - new)
    if old == 0:
        return math.copysign(math.inf, better) if better else 0.0
    return better / abs(old)


def decide(
    dataset: str, metric: str, higher_is_better: bool, threshold: float, challenger: Contender, current: Contender | None
) -> Decision:
    """Move ``champion`` to ``challenger`` only when there is no champion or it wins by more than ``threshold``."""

    def made(moved: bool, reason: str, g: float | None = None) -> Decision:
        return Decision(
            dataset,
            metric,
            higher_is_better,
            threshold,
            challenger.variant,
            challenger.value,
            current.variant if current else None,
            current.value if current else None,
            current.version if current else None,
            g,
            moved,
            reason,
            None if moved else (current.version if current else None),
        )

    if challenger.value is None or not math.isfinite(challenger.value):
        return made(False, f"the challenger's {metric} is {challenger.value}, not a number")
    if current is None:
        return made(True, "first champion")
    if current.run_id == challenger.run_id:
        return made(False, "the challenger is the champion already", 0.0)
    if current.value is None or not math.isfinite(current.value):
        return made(True, f"the champion has no {metric} figure")
    g = gain(challenger.value, current.value, higher_is_better)
    if g > threshold:
        return made(True, f"better by {g:.2%} > {threshold:.2%}", g)
    return made(False, f"{'better' if g > 0 else 'not better'} by {g:.2%}, needs > {threshold:.2%}", g)


def best(contenders: list[Contender], higher_is_better: bool) -> Contender:
    """The contender with the best finite figure (ties: the first variant by name); else the first by name."""
    ranked = sorted(contenders, key=lambda c: c.variant)
    finite = [c for c in ranked if c.value is not None and math.isfinite(c.value)]
    if not finite:
        return ranked[0]
    return (max if higher_is_better else min)(finite, key=lambda c: c.value)  # max/min keep the first of equals


def _figure(tags: dict[str, str], metric: str) -> float | None:
    try:
        return float(tags[f"test_{metric}"])
    except (KeyError, ValueError):
        return None


def register_variant(variant: str, dataset: str) -> tuple[Contender, str, dict[str, str]] | None:
    """Register ``models/<variant>``'s run as a version of ``<dataset>.<variant>``: (contender, key metric, its tags).

    None, with a warning, when the run holds no MLflow model to register (DVC
    restored the model file into a store where no train run logged it).
    """
    metrics_file, model_file = paths.metrics(variant), paths.model(variant) / "model.keras"
    for path in (metrics_file, model_file):
        if not path.is_file():
            raise PipelineError(f"{path}: not found; run train@{variant} and evaluate first")
    metrics = json.loads(metrics_file.read_text())
    if metrics.get("task") not in TASKS:
        raise PipelineError(f"{metrics_file}: task {metrics.get('task')!r} is not one of {', '.join(TASKS)}")
    key = TASKS[metrics["task"]][0]
    md5 = tracking.file_md5(model_file)
    run_id = tracking.find_model_run(f"train@{variant}", md5, dataset)
    if run_id is None:
        raise PipelineError(
            f"{model_file}: no MLflow run in {tracking.tracking_uri()} holds this model (md5 {md5}); run evaluate first"
        )
    if not mlflow_registry.has_model(run_id):
        log.warning(
            "%s: run %s holds no MLflow model (restored by DVC?); not registered: run `dvc repro -f train@%s`",
            variant,
            run_id,
            variant,
        )
        return None
    scalars = {f"test_{k}": v for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)}
    tags = {"variant": variant, "dataset": dataset, tracking.MODEL_TAG: md5, **{k: str(v) for k, v in scalars.items()}}
    version = mlflow_registry.register(mlflow_registry.variant_name(dataset, variant), run_id, tags)
    return Contender(variant, _figure(tags, key), run_id, version.version), key, tags


def register_dataset(dataset: str, variants: list[str], threshold: float) -> Decision | None:
    """Register every variant of ``dataset``, then move its champion when the best one wins (:func:`decide`).

    None when no variant has a model to register (see :func:`register_variant`).
    """
    registered = [r for r in (register_variant(v, dataset) for v in variants) if r is not None]
    if not registered:
        log.warning("%s: no variant has an MLflow model to register; the champion stays as it is", dataset)
        return None
    keys = {key for _, key, _ in registered}
    if len(keys) != 1:
        raise PipelineError(f"variants of {dataset} report different tasks (key metrics {sorted(keys)}); re-run evaluate")
    metric = keys.pop()
    higher = sense(metric) == "higher"
    challenger = best([c for c, _, _ in registered], higher)
    held = mlflow_registry.champion(dataset)
    current = Contender(held.tags.get("variant", "?"), _figure(held.tags, metric), held.run_id, held.version) if held else None
    decision = decide(dataset, metric, higher, threshold, challenger, current)
    if decision.moved:
        tags = next(t for c, _, t in registered if c is challenger)
        decision = Decision(**{**asdict(decision), "version": mlflow_registry.crown(dataset, challenger.run_id, tags).version})
    mlflow_registry.record(dataset, challenger.run_id, asdict(decision))
    log.info(
        "%s: %s (%s %s) vs champion %s (%s): %s -> models:/%s@%s is version %s",
        dataset,
        decision.challenger,
        metric,
        decision.challenger_value,
        decision.champion,
        decision.champion_value,
        "moved" if decision.moved else "kept",
        dataset,
        mlflow_registry.ALIAS,
        decision.version,
    )
    return decision


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline register``: every variant in params.yaml, then one decision per dataset."""
    params = config.load()
    parser = argparse.ArgumentParser(prog="python -m pipeline register", description=__doc__)
    parser.parse_args(argv)
    tracking.check()  # an unreachable store fails now, not after the imports and the data
    by_dataset: dict[str, list[str]] = {}
    for name, variant in params.variants.items():
        by_dataset.setdefault(variant.dataset, []).append(name)
    paths.REGISTER.mkdir(parents=True, exist_ok=True)  # the DVC output, even when no dataset had a model to register
    for dataset, names in by_dataset.items():
        decision = register_dataset(dataset, names, params.review.threshold)
        if decision is not None:
            files.write_json(paths.register(dataset), _plain(asdict(decision)))


def _plain(decision: dict[str, Any]) -> dict[str, Any]:
    """JSON has no infinity: an unbounded gain (over a zero figure) is written as null."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in decision.items()}
