"""The comparison: what differs between two sides (metrics, params, statistics, validation), as plain data; pure."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline import config
from pipeline.config import flatten
from pipeline.metrics import TASKS, sense

TIMINGS = ("train_seconds", "images_per_s")  # wall-clock: vary run to run, never marked
STATS_KEYS = ("examples", "image.mean", "image.std", "classes", "class_weights.", "tabular.")
VALIDATION_COUNTS = ("success", "files", "accepted", "rejected_count", "warnings_count", "houses")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()  # a key or value absent on one side


# --------------------------------------------------------------------------- the data


@dataclass(frozen=True)
class Change:
    """A value that differs between the sides (``MISSING`` where one side lacks the key)."""

    key: str
    old: Any = MISSING
    new: Any = MISSING


@dataclass(frozen=True)
class MetricDelta:
    """One metric of both sides and its verdict."""

    name: str
    base: float | None
    head: float | None
    verdict: str  # better worse same | faster slower | up down | new removed | n/a
    flagged: bool  # relative change above the threshold

    @property
    def delta(self) -> float | None:
        if self.base is None or self.head is None:
            return None
        return self.head - self.base

    @property
    def relative(self) -> float | None:
        d = self.delta
        if d is None or math.isnan(d) or self.base == 0:
            return None
        return d / abs(self.base)


@dataclass
class Side:
    """One side of the comparison, as read from the working tree or a revision."""

    label: str
    params: dict[str, Any]
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # variant -> reports/metrics/<variant>.json
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # dataset -> data/stats/<dataset>.json
    validation: dict[str, dict[str, Any]] = field(default_factory=dict)  # dataset -> reports/validation/<dataset>.json
    class_weights: dict[str, dict[str, Any]] = field(default_factory=dict)  # variant -> models/<variant>/class_weight.json
    models: dict[str, str] = field(default_factory=dict)  # variant -> md5 of models/<variant>/model.keras
    runs: dict[str, str] = field(default_factory=dict)  # variant -> MLflow run id (the run that trained that file)
    images: dict[str, dict[str, bytes]] = field(default_factory=dict)  # variant (or "augmentation") -> name -> PNG
    notes: list[str] = field(default_factory=list)  # what could not be read, outputs older than the params
    missing: list[str] = field(default_factory=list)  # what could not be read (absent from the DVC cache, ...)
    sources: dict[str, str] = field(default_factory=dict)  # a rebuilt revision's out path -> where it came from
    source_note: str = ""  # why the DVC remote was not used for it, when it was not

    @property
    def variant_names(self) -> list[str]:
        """The variants of params.yaml, then those with metrics only."""
        variants = self.params.get("variants")
        names = list(variants) if isinstance(variants, Mapping) else []
        return names + [v for v in self.metrics if v not in names]


@dataclass
class VariantReview:
    """One variant compared: its metrics, resolved params, class weights and runs."""

    name: str
    dataset: str | None
    task: str | None
    status: str  # kept | new | removed
    metrics: list[MetricDelta]
    params: list[Change]
    class_weights: list[Change]
    run_base: str | None
    run_head: str | None
    confusion: Change | None = None  # the confusion matrix, when it changed

    @property
    def key_metric(self) -> MetricDelta | None:
        key = TASKS[self.task][0] if self.task in TASKS else None
        return next((m for m in self.metrics if m.name == key), None)

    @property
    def metric_changes(self) -> list[MetricDelta]:
        """The metrics that changed, timings left out (they differ on every run)."""
        return [m for m in self.metrics if m.verdict != "same" and m.name not in TIMINGS]

    @property
    def flagged(self) -> list[MetricDelta]:
        return [m for m in self.metrics if m.flagged]

    @property
    def changed(self) -> bool:
        return self.status != "kept" or bool(self.params or self.class_weights or self.metric_changes or self.confusion)


@dataclass
class ValidationReview:
    """One dataset's validation summary on both sides."""

    dataset: str
    counts: list[Change]  # every summary count, changed or not
    newly_rejected: list[str]
    no_longer_rejected: list[str]

    @property
    def changed(self) -> bool:
        return any(c.old != c.new for c in self.counts) or bool(self.newly_rejected or self.no_longer_rejected)


@dataclass
class Review:
    """Everything that differs between the sides, and the plots of both."""

    base: str
    head: str
    threshold: float
    variants: list[VariantReview]
    pipeline_params: list[Change]
    stats: dict[str, list[Change]]
    validation: list[ValidationReview]
    notes: list[str]
    base_images: dict[str, dict[str, bytes]] = field(default_factory=dict)
    head_images: dict[str, dict[str, bytes]] = field(default_factory=dict)
    base_sources: dict[str, str] = field(default_factory=dict)  # out path -> local DVC cache | DVC remote 'x' | rebuilt
    base_source_note: str = ""


# --------------------------------------------------------------------------- metrics


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def verdict(metric: str, base: float | None, head: float | None) -> str:
    """better / worse / same for metrics with a sense; faster / slower; up / down; new / removed; n/a (NaN)."""
    if base is None:
        return "new"
    if head is None:
        return "removed"
    if math.isnan(base) or math.isnan(head):
        return "same" if math.isnan(base) and math.isnan(head) else "n/a"
    d = head - base
    if abs(d) <= 1e-12 * max(1.0, abs(base), abs(head)):
        return "same"
    s = sense(metric)
    if s == "higher":
        return "better" if d > 0 else "worse"
    if s == "lower":
        return "better" if d < 0 else "worse"
    if s == "faster":
        return "faster" if d > 0 else "slower"
    return "up" if d > 0 else "down"


def diff_metrics(base: Mapping[str, Any] | None, head: Mapping[str, Any] | None, threshold: float) -> list[MetricDelta]:
    """Every numeric metric of either side (head's order first), with its verdict and threshold marker."""
    base, head = base or {}, head or {}
    names = [k for k in head if _scalar(head[k])] + [k for k in base if _scalar(base[k]) and not _scalar(head.get(k))]
    out = []
    for name in names:
        b = base[name] if _scalar(base.get(name)) else None
        h = head[name] if _scalar(head.get(name)) else None
        v = verdict(name, b, h)
        flagged = False
        if v not in ("same", "new", "removed", "n/a") and name not in TIMINGS:
            flagged = b == 0 or abs(h - b) / abs(b) > threshold
        out.append(MetricDelta(name, b, h, v, flagged))
    return out


# --------------------------------------------------------------------------- params


def _diff_flat(old: Mapping[str, Any], new: Mapping[str, Any], rename: Callable[[str], str] = str) -> list[Change]:
    keys = list(new) + [k for k in old if k not in new]
    pairs = ((k, old.get(k, MISSING), new.get(k, MISSING)) for k in keys)
    return [Change(rename(k), a, b) for k, a, b in pairs if a != b]


def resolve_variants(raw: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """variant -> its flattened settings, each resolved over the shared ``train`` section.

    Through :func:`pipeline.config.parse` (defaults filled in, so writing a default
    out is no change); a params file that today's schema refuses (an old revision)
    is resolved as written.
    """
    try:
        parsed = config.parse(raw)
    except config.ConfigError:
        variants = raw.get("variants") if isinstance(raw, Mapping) else None
        shared = raw.get("train") if isinstance(raw, Mapping) and isinstance(raw.get("train"), Mapping) else {}
        out = {}
        for name, v in (variants or {}).items():
            v = dict(v) if isinstance(v, Mapping) else {"value": v}
            overrides = v.pop("train", {})
            out[name] = flatten({**v, "train": {**shared, **(overrides if isinstance(overrides, Mapping) else {})}})
        return out
    out = {}
    for name, variant in parsed.variants.items():
        settings = variant.model_dump(exclude={"name"})
        if (policy := parsed.augment.policies.get(variant.augment)) is not None:  # as the train stage resolves it
            settings["augment_policy"] = policy.model_dump()
        out[name] = flatten(settings)
    return out


def _params_key(variant: str, key: str, raws: Iterable[Mapping[str, Any]]) -> str:
    """The params.yaml key a resolved setting comes from: shared ``train.<k>`` / ``transfer.<k>`` or ``variants.<variant>.<...>``.

    ``augment_policy.<k>`` comes from ``augment.policies.<the variant's policy>.<k>``.
    """
    if key.startswith("augment_policy."):
        entries = [(raw.get("variants") or {}).get(variant) for raw in raws]
        names = [e["augment"] for e in entries if isinstance(e, Mapping) and isinstance(e.get("augment"), str)]
        return f"augment.policies.{names[-1] if names else '?'}.{key.split('.', 1)[1]}"
    section, _, rest = key.partition(".")
    if section in config.Variant.FILLED and rest:  # train, transfer: shared unless the variant overrides the key
        first = rest.split(".")[0]
        for raw in raws:
            entry = (raw.get("variants") or {}).get(variant)
            if isinstance(entry, Mapping) and isinstance(entry.get(section), Mapping) and first in entry[section]:
                return f"variants.{variant}.{key}"
        return key
    return f"variants.{variant}.{key}"


def diff_params(base: Mapping[str, Any], head: Mapping[str, Any]) -> tuple[dict[str, list[Change]], list[Change]]:
    """(variant -> its changed settings, the changed pipeline-wide params).

    A kept variant's changes are those of its resolved settings, each named by the
    params.yaml key it comes from (``variants.lenet5.train.learning_rate``, or
    ``train.epochs`` when the variant takes the shared value); a new or removed
    variant lists its entry as written. Pipeline-wide: every other section
    (``train`` included: it is shared), once.
    """
    resolved_base, resolved_head = resolve_variants(base), resolve_variants(head)
    raw_base, raw_head = base.get("variants") or {}, head.get("variants") or {}
    per_variant: dict[str, list[Change]] = {}
    for name in list(resolved_head) + [n for n in resolved_base if n not in resolved_head]:
        if name in resolved_base and name in resolved_head:
            key = lambda k, n=name: _params_key(n, k, (base, head))  # noqa: E731
            per_variant[name] = _diff_flat(resolved_base[name], resolved_head[name], key)
        else:
            entry_base = flatten(raw_base.get(name, {}), f"variants.{name}") if name in raw_base else {}
            entry_head = flatten(raw_head.get(name, {}), f"variants.{name}") if name in raw_head else {}
            per_variant[name] = _diff_flat(entry_base, entry_head)
    sections = [s for s in list(head) + [s for s in base if s not in head] if s != "variants"]
    pipeline_wide = _diff_flat(
        flatten({s: base[s] for s in sections if s in base}),
        flatten({s: head[s] for s in sections if s in head}),
    )
    return per_variant, pipeline_wide


# --------------------------------------------------------------------------- data


def diff_stats(base: Mapping[str, Any] | None, head: Mapping[str, Any] | None) -> list[Change]:
    """Changes of a train-split statistics file: examples, image mean/std, classes, class weights, tabular stats."""

    def pick(stats: Mapping[str, Any] | None) -> dict[str, Any]:
        flat = flatten(stats or {})
        return {k: v for k, v in flat.items() if any(k == p or (p.endswith(".") and k.startswith(p)) for p in STATS_KEYS)}

    return _diff_flat(pick(base), pick(head))


def diff_validation(dataset: str, base: Mapping[str, Any] | None, head: Mapping[str, Any] | None) -> ValidationReview:
    """The validation summary of both sides: counts (and per label), files newly (no longer) rejected."""
    base, head = base or {}, head or {}
    keys = [k for k in VALIDATION_COUNTS if k in base or k in head]
    counts = [Change(k, base.get(k, MISSING), head.get(k, MISSING)) for k in keys]
    lb, lh = base.get("per_label") or {}, head.get("per_label") or {}
    counts += [
        Change(f"per_label.{k}", lb.get(k, MISSING), lh.get(k, MISSING)) for k in list(lh) + [k for k in lb if k not in lh]
    ]

    def rejected(report: Mapping[str, Any]) -> dict[str, str]:
        return {r.get("path", "?"): r.get("reason", "") for r in report.get("rejected") or [] if isinstance(r, Mapping)}

    rb, rh = rejected(base), rejected(head)
    return ValidationReview(
        dataset,
        counts,
        newly_rejected=[f"{p}: {rh[p]}" for p in rh if p not in rb],
        no_longer_rejected=[f"{p}: {rb[p]}" for p in rb if p not in rh],
    )


# --------------------------------------------------------------------------- the whole comparison


def _variant(name: str, status: str, base: Side, head: Side, params: list[Change], threshold: float) -> VariantReview:
    """Variant ``name`` of both sides (``params``: its changed settings, from :func:`diff_params`)."""
    mb, mh = base.metrics.get(name), head.metrics.get(name)
    declared = (head.params.get("variants") or {}).get(name) or (base.params.get("variants") or {}).get(name) or {}
    info = {**(mb or {}), **(mh or {})}
    cb, ch = (mb or {}).get("confusion_matrix"), (mh or {}).get("confusion_matrix")
    kept = status == "kept"
    return VariantReview(
        name=name,
        dataset=info.get("dataset") or (declared.get("dataset") if isinstance(declared, Mapping) else None),
        task=info.get("task"),
        status=status,
        metrics=diff_metrics(mb, mh, threshold) if (mb or mh) else [],
        params=params,
        class_weights=_diff_flat(flatten(base.class_weights.get(name) or {}), flatten(head.class_weights.get(name) or {}))
        if kept
        else [],
        run_base=base.runs.get(name),
        run_head=head.runs.get(name),
        confusion=Change("confusion_matrix", cb, ch) if kept and cb and ch and cb != ch else None,
    )


def compare(base: Side, head: Side, threshold: float) -> Review:
    """Everything that differs between ``base`` and ``head``; pure."""
    per_variant, pipeline_wide = diff_params(base.params, head.params)
    names_base, names_head = base.variant_names, head.variant_names
    status = {n: "kept" if n in names_base else "new" for n in names_head}  # head's order, then the removed
    status |= {n: "removed" for n in names_base if n not in names_head}
    datasets = list(head.stats) + [d for d in base.stats if d not in head.stats]
    checked = list(head.validation) + [d for d in base.validation if d not in head.validation]
    return Review(
        base=base.label,
        head=head.label,
        threshold=threshold,
        variants=[_variant(n, s, base, head, per_variant.get(n, []), threshold) for n, s in status.items()],
        pipeline_params=pipeline_wide,
        stats={d: diff_stats(base.stats.get(d), head.stats.get(d)) for d in datasets},
        validation=[diff_validation(d, base.validation.get(d), head.validation.get(d)) for d in checked],
        notes=[f"{base.label}: {n}" for n in base.notes] + [f"{head.label}: {n}" for n in head.notes],
        base_images=base.images,
        head_images=head.images,
        base_sources=base.sources,
        base_source_note=base.source_note,
    )
