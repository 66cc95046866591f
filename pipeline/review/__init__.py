"""``python -m pipeline report --base <rev>``: what a change did to the pipeline, against a git revision.

Compares the workspace (or ``--head``, an experiment name or another revision)
with the git revision ``--base`` and renders, per variant: the metric deltas
with their direction (better/worse by the metric's sense) and a marker when a
relative change exceeds ``review.threshold``; the params that changed (the
variant resolved over the shared ``train`` section); its class weights; the
MLflow run id of each side; new and removed variants. Then the pipeline-wide
params, the train-split statistics (normalization mean/std, class weights) and
the validation summaries (accepted/rejected counts) that changed.

Markdown is fit for a pull-request comment (details collapsed); HTML carries
the same content with the plots embedded.

The workspace side is read from the working tree. A revision's generated
outputs are DVC-tracked, not in git: they are read through DVC
(:class:`dvc.api.DVCFileSystem` at that revision, resolved from its
``dvc.lock`` and the local DVC cache), its ``params.yaml`` from git. Where the
cache lacks them (a fresh clone, CI: outputs hold run ids and timings, so no
rerun reproduces the committed hashes), ``--rebuild-base`` reproduces them in a
worktree of that revision, DVC's run cache restoring every stage already run here.

Layout: pure functions (:func:`diff_metrics`, :func:`diff_params`,
:func:`diff_stats`, :func:`diff_validation`, :func:`compare`,
:func:`render_md`, :func:`render_html`) over plain dicts, and a thin I/O layer
(:func:`load_side`, :func:`review`, :func:`run`). TensorFlow is never imported.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from pipeline import config, files, paths
from pipeline.config import flatten
from pipeline.errors import PipelineError
from pipeline.metrics import TASKS, sense

log = logging.getLogger(__name__)

MARKER = "<!-- cnn-pipeline-review -->"  # finds the pull-request comment to update in place
FLAG = "⚠"

TIMINGS = ("train_seconds", "images_per_s")  # wall-clock: vary run to run, never marked


class ReviewError(PipelineError):
    """A revision cannot be resolved or read."""


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()  # a key or value absent on one side


# --------------------------------------------------------------------------- the compared data


@dataclass(frozen=True)
class Change:
    """A value that differs between the sides (``MISSING`` where one side lacks the key)."""

    key: str
    old: Any = MISSING
    new: Any = MISSING


@dataclass(frozen=True)
class MetricDelta:
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
    runs: dict[str, str] = field(default_factory=dict)  # variant -> MLflow run id
    images: dict[str, dict[str, bytes]] = field(default_factory=dict)  # variant (or "augmentation") -> name -> PNG
    notes: list[str] = field(default_factory=list)  # what could not be read, outputs older than the params
    missing: list[str] = field(default_factory=list)  # what could not be read (absent from the DVC cache, ...)


@dataclass
class VariantReview:
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
    dataset: str
    counts: list[Change]  # every summary count, changed or not
    newly_rejected: list[str]
    no_longer_rejected: list[str]

    @property
    def changed(self) -> bool:
        return any(c.old != c.new for c in self.counts) or bool(self.newly_rejected or self.no_longer_rejected)


@dataclass
class Review:
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

    def variant(self, name: str) -> VariantReview:
        return next(v for v in self.variants if v.name == name)


# --------------------------------------------------------------------------- pure: metrics


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


# --------------------------------------------------------------------------- pure: params


def _diff_flat(old: Mapping[str, Any], new: Mapping[str, Any], rename=lambda k: k) -> list[Change]:  # noqa: ANN001
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
        settings = dataclasses.asdict(variant)
        settings.pop("name")
        out[name] = flatten(settings)
    return out


def _params_key(variant: str, key: str, raws: Iterable[Mapping[str, Any]]) -> str:
    """The params.yaml key a resolved setting comes from: the shared ``train.<k>`` or ``variants.<variant>.<...>``."""
    if key.startswith("train."):
        first = key.split(".")[1]
        for raw in raws:
            entry = (raw.get("variants") or {}).get(variant)
            if isinstance(entry, Mapping) and isinstance(entry.get("train"), Mapping) and first in entry["train"]:
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


# --------------------------------------------------------------------------- pure: data

STATS_KEYS = ("examples", "image.mean", "image.std", "classes", "class_weights.", "tabular.")
VALIDATION_COUNTS = ("success", "files", "accepted", "rejected_count", "warnings_count", "houses")


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


# --------------------------------------------------------------------------- pure: the whole comparison


def _variant_names(side: Side) -> list[str]:
    names = list(side.params.get("variants") or {}) if isinstance(side.params.get("variants"), Mapping) else []
    return names + [v for v in side.metrics if v not in names]


def compare(base: Side, head: Side, threshold: float) -> Review:
    """Everything that differs between ``base`` and ``head``; pure."""
    per_variant, pipeline_wide = diff_params(base.params, head.params)
    names_base, names_head = _variant_names(base), _variant_names(head)
    variants = []
    for name in names_head + [n for n in names_base if n not in names_head]:
        status = "kept" if name in names_base and name in names_head else ("new" if name in names_head else "removed")
        mb, mh = base.metrics.get(name), head.metrics.get(name)
        declared = (head.params.get("variants") or {}).get(name) or (base.params.get("variants") or {}).get(name) or {}
        info = {**(mb or {}), **(mh or {})}
        confusion = None
        cb, ch = (mb or {}).get("confusion_matrix"), (mh or {}).get("confusion_matrix")
        if status == "kept" and cb and ch and cb != ch:
            confusion = Change("confusion_matrix", cb, ch)
        variants.append(
            VariantReview(
                name=name,
                dataset=info.get("dataset") or (declared.get("dataset") if isinstance(declared, Mapping) else None),
                task=info.get("task"),
                status=status,
                metrics=diff_metrics(mb, mh, threshold) if (mb or mh) else [],
                params=per_variant.get(name, []),
                class_weights=_diff_flat(flatten(base.class_weights.get(name) or {}), flatten(head.class_weights.get(name) or {}))
                if status == "kept"
                else [],
                run_base=base.runs.get(name),
                run_head=head.runs.get(name),
                confusion=confusion,
            )
        )
    datasets = list(head.stats) + [d for d in base.stats if d not in head.stats]
    checked = list(head.validation) + [d for d in base.validation if d not in head.validation]
    notes = [f"{base.label}: {n}" for n in base.notes] + [f"{head.label}: {n}" for n in head.notes]
    return Review(
        base=base.label,
        head=head.label,
        threshold=threshold,
        variants=variants,
        pipeline_params=pipeline_wide,
        stats={d: diff_stats(base.stats.get(d), head.stats.get(d)) for d in datasets},
        validation=[diff_validation(d, base.validation.get(d), head.validation.get(d)) for d in checked],
        notes=notes,
        base_images=base.images,
        head_images=head.images,
    )


# --------------------------------------------------------------------------- pure: formatting


def fmt_number(value: float | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 1000):
        return f"{int(value):,}"
    a = abs(value)
    if a == 0:
        return "0"
    if a >= 1000:
        return f"{value:,.0f}"
    if a >= 100:
        return f"{value:.1f}"
    if a >= 10:
        return f"{value:.2f}"
    if a >= 1e-3:
        return f"{value:.4f}"
    return f"{value:.3g}"


def fmt_delta(m: MetricDelta) -> str:
    d = m.delta
    if d is None or math.isnan(d):
        return "—"
    if m.verdict == "same":
        return "0"
    text = ("+" if d > 0 else "−") + fmt_number(abs(d))
    rel = m.relative
    if rel is not None:
        text += f" ({'+' if rel > 0 else '−'}{abs(rel) * 100:.1f} %)"
    return f"{text} {FLAG}" if m.flagged else text


def fmt_value(value: Any) -> str:
    """A params/stats value as YAML would write it (floats shortened in lists)."""
    if value is MISSING:
        return "(absent)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(f"{v:.5g}" if isinstance(v, float) else fmt_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {fmt_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _pct(threshold: float) -> str:
    return f"{threshold * 100:g} %"


# --------------------------------------------------------------------------- pure: the document (rendered as Markdown or HTML)
# Inline text uses `code` and **bold**; both renderers escape everything else.


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Details:
    summary: str
    blocks: list[Any]


@dataclass
class Images:
    """PNG plots: (caption, base PNG when it differs from the head's, head PNG); HTML only."""

    items: list[tuple[str, bytes | None, bytes | None]]


def _code(text: Any) -> str:
    return f"`{str(text).replace('`', '')}`"


def _run(run_id: str | None) -> str:
    return _code(run_id) if run_id else "—"


def _change_table(changes: list[Change], what: str = "key") -> Table:
    return Table([what, "base", "head"], [[_code(c.key), fmt_value(c.old), fmt_value(c.new)] for c in changes])


def _metric_table(metrics: list[MetricDelta]) -> Table:
    senses = {"higher": "higher is better", "lower": "lower is better", "faster": "higher is faster", "neutral": ""}
    rows = [[m.name, senses[sense(m.name)], fmt_number(m.base), fmt_number(m.head), fmt_delta(m), m.verdict] for m in metrics]
    return Table(["metric", "sense", "base", "head", "delta", "verdict"], rows)


def _variant_summary(v: VariantReview, threshold: float) -> str:
    parts = [f"**{v.name}**"]
    if v.status != "kept":
        parts.append(f"{v.status} variant")
    key = v.key_metric
    if key and v.status == "kept":
        rel = key.relative
        parts.append(f"{key.name} {key.verdict}" + (f" ({'+' if rel > 0 else '−'}{abs(rel) * 100:.1f} %)" if rel else ""))
    if v.params and v.status == "kept":
        parts.append(f"{len(v.params)} param{'s' if len(v.params) != 1 else ''} changed")
    others = len(v.metric_changes) - (1 if key and key.verdict != "same" else 0)
    if others > 0 and v.status == "kept":
        parts.append(f"{others} other metric{'s' if others != 1 else ''} changed")
    if v.flagged:
        parts.append(f"{FLAG} {len(v.flagged)} above {_pct(threshold)}")
    return ": ".join(parts[:2]) + (", " + ", ".join(parts[2:]) if len(parts) > 2 else "")


def _headline_row(v: VariantReview) -> list[str]:
    key = v.key_metric
    changed = [c.key for c in v.params]
    params_cell = ", ".join(_code(k) for k in changed[:2]) + (f" +{len(changed) - 2}" if len(changed) > 2 else "")
    if v.status != "kept":
        params_cell = ""
    if key is None:
        return [_code(v.name), v.dataset or "", "—", "—", "—", v.status if v.status != "kept" else "n/a", params_cell]
    if v.status in ("new", "removed"):
        verdict_text = v.status
    elif key.base is None or key.head is None:
        verdict_text = f"no {'base' if key.base is None else 'head'} value"
    else:
        verdict_text = key.verdict
    return [
        _code(v.name),
        v.dataset or "",
        key.name,
        f"{fmt_number(key.base)} → {fmt_number(key.head)}",
        fmt_delta(key),
        verdict_text,
        params_cell,
    ]


def document(review: Review, images: bool = False) -> list[Any]:
    """The report as blocks; ``images`` adds the PNG plots (HTML)."""
    changed = [v for v in review.variants if v.changed]
    new = [v.name for v in review.variants if v.status == "new"]
    removed = [v.name for v in review.variants if v.status == "removed"]
    with_params = [v for v in review.variants if v.status == "kept" and v.params]
    flagged = sum(len(v.flagged) for v in review.variants)
    blocks: list[Any] = [Heading(2, f"Pipeline review: {_code(review.base)} → {_code(review.head)}")]
    summary = [
        f"**{len(changed)} of {len(review.variants)} variants changed**",
        f"{len(with_params)} with param changes",
        f"{len(new)} new" + (f" ({', '.join(_code(n) for n in new)})" if new else ""),
        f"{len(removed)} removed" + (f" ({', '.join(_code(n) for n in removed)})" if removed else ""),
        f"{flagged} metric change{'s' if flagged != 1 else ''} above the {_pct(review.threshold)} threshold"
        + (f" {FLAG}" if flagged else "")
        + f" ({_code('review.threshold')})",
    ]
    blocks.append(Para("; ".join(summary) + "."))
    if review.variants:
        blocks.append(
            Table(
                ["variant", "dataset", "key metric", "base → head", "delta", "verdict", "params changed"],
                [_headline_row(v) for v in review.variants],
            )
        )
    if review.notes:
        what = "**Notes** (a value that could not be read shows as —)"
        if len(review.notes) <= 3:
            blocks += [Para(what + ":"), Bullets(review.notes)]
        else:
            blocks.append(Details(f"{what} ({len(review.notes)} notes)", [Bullets(review.notes)]))

    for v in changed:
        inner: list[Any] = []
        if v.params:
            what = "as written" if v.status != "kept" else "resolved: the variant's overrides over the shared `train` section"
            inner += [Para(f"**Params** ({what})"), _change_table(v.params)]
        if v.metrics:
            inner += [Para("**Metrics** (test split)"), _metric_table(v.metrics)]
        if v.confusion:
            old, new = (c if isinstance(c, Mapping) else {"matrix": c} for c in (v.confusion.old, v.confusion.new))
            labels = ", ".join(map(str, new.get("labels") or []))
            inner += [
                Para(f"**Confusion matrix** (rows: actual, columns: predicted{'; ' + labels if labels else ''})"),
                Table(["base", "head"], [[fmt_value(old.get("matrix")), fmt_value(new.get("matrix"))]]),
            ]
        if v.class_weights:
            where = _code((paths.model(v.name) / "class_weight.json").as_posix())
            inner += [Para(f"**Class weights** ({where})"), _change_table(v.class_weights, "class")]
        inner.append(Para(f"**MLflow run**: base {_run(v.run_base)} → head {_run(v.run_head)}"))
        if images:
            plots = _plot_items(review.base_images.get(v.name, {}), review.head_images.get(v.name, {}))
            if plots:
                inner += [Para("**Plots**"), Images(plots)]
        blocks.append(Details(_variant_summary(v, review.threshold), inner))

    if images:
        same = [
            (v.name, _plot_items(review.base_images.get(v.name, {}), review.head_images.get(v.name, {}))) for v in review.variants
        ]
        same = [(name, plots) for (name, plots), v in zip(same, review.variants) if plots and not v.changed]
        if same:
            inner = []
            for name, plots in same:
                inner += [Para(f"{_code(name)}"), Images(plots)]
            blocks.append(Details(f"**Plots of the unchanged variants** ({len(same)})", inner))

    blocks.append(Heading(3, "Data and pipeline-wide params"))
    n = len(review.pipeline_params)
    if n:
        blocks.append(Details(f"**Pipeline-wide params**: {n} changed", [_change_table(review.pipeline_params)]))
    else:
        blocks.append(Para("**Pipeline-wide params**: none changed."))

    rows = []
    for val in review.validation:
        cells = {c.key: c for c in val.counts}

        def cell(key: str, cells: dict[str, Change] = cells) -> str:
            c = cells.get(key)
            if c is None:
                return ""
            return fmt_value(c.new) if c.old == c.new else f"{fmt_value(c.old)} → {fmt_value(c.new)}"

        rows.append([val.dataset, *(cell(k) for k in ("files", "accepted", "rejected_count", "warnings_count", "success"))])
    val_changed = [v for v in review.validation if v.changed]
    if review.validation:
        inner = [Table(["dataset", "files", "accepted", "rejected", "warnings", "suites passed"], rows)]
        for val in val_changed:
            labels = [c for c in val.counts if c.key.startswith("per_label.") and c.old != c.new]
            if labels:
                inner += [Para(f"{_code(val.dataset)}: accepted per label"), _change_table(labels, "label")]
            if val.newly_rejected:
                inner += [Para(f"{_code(val.dataset)}: newly rejected"), Bullets([_code(x) for x in val.newly_rejected])]
            if val.no_longer_rejected:
                inner += [Para(f"{_code(val.dataset)}: no longer rejected"), Bullets([_code(x) for x in val.no_longer_rejected])]
        what = ", ".join(_code(v.dataset) for v in val_changed) + " changed" if val_changed else "unchanged"
        blocks.append(Details(f"**Validation** (accepted/rejected files): {what}", inner))

    stats_changed = {d: c for d, c in review.stats.items() if c}
    if stats_changed:
        inner = []
        for d, changes in stats_changed.items():
            inner += [Para(f"{_code(paths.stats(d).as_posix())}"), _change_table(changes)]
        what = ", ".join(_code(d) for d in stats_changed) + " changed"
        blocks.append(Details(f"**Train-split statistics** (normalization mean/std, class weights): {what}", inner))
    elif review.stats:
        blocks.append(Para("**Train-split statistics** (normalization mean/std, class weights): unchanged."))
    if images:
        aug = _plot_items(review.base_images.get("augmentation", {}), review.head_images.get("augmentation", {}))
        if aug:
            blocks.append(Details("**Augmentation preview**", [Images(aug)]))

    runs = [[_code(v.name), _run(v.run_base), _run(v.run_head)] for v in review.variants]
    if runs:
        blocks.append(Details("**MLflow runs** of each side", [Table(["variant", "base run", "head run"], runs)]))
    legend = (
        "Verdicts follow each metric's sense (accuracy, precision, recall, F1, ROC AUC: higher is better; "
        "MAPE, MAE, RMSE: lower is better; images/s: higher is faster; others neutral). "
        f"{FLAG}: relative change above {_pct(review.threshold)} ({_code('review.threshold')}); timings are never marked."
    )
    if not images:
        legend += " Plots: in the HTML report (`python -m pipeline report --base <rev> --format html`)."
    blocks.append(Para(f"<sub>{legend}</sub>"))
    return blocks


def _plot_items(base: Mapping[str, bytes], head: Mapping[str, bytes]) -> list[tuple[str, bytes | None, bytes | None]]:
    """Each plot of the head, with the base's beside it when it differs (a removed plot: the base's alone)."""
    items = []
    for name in list(head) + [n for n in base if n not in head]:
        b, h = base.get(name), head.get(name)
        items.append((f"{name} (unchanged)" if b == h else name, b if b != h else None, h))
    return items


# --------------------------------------------------------------------------- pure: renderers

_INLINE = re.compile(r"`([^`]*)`|\*\*(.+?)\*\*|(<sub>|</sub>)")


def _inline_html(text: str) -> str:
    """`code`, **bold** and <sub> of the inline markup as HTML; everything else escaped."""
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[pos : m.start()], quote=False))
        if m.group(1) is not None:
            out.append(f"<code>{html.escape(m.group(1), quote=False)}</code>")
        elif m.group(2) is not None:
            out.append(f"<b>{_inline_html(m.group(2))}</b>")
        else:
            out.append(m.group(3))
        pos = m.end()
    out.append(html.escape(text[pos:], quote=False))
    return "".join(out)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _to_md(blocks: list[Any]) -> list[str]:
    lines: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            lines += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            lines += [b.text, ""]
        elif isinstance(b, Bullets):
            lines += [f"- {item}" for item in b.items] + [""]
        elif isinstance(b, Table):
            lines.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            lines.append("|" + "---|" * len(b.header))
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            lines.append("")
        elif isinstance(b, Details):
            # GitHub renders Markdown inside <details> after a blank line; the summary must be HTML
            lines += ["<details>", f"<summary>{_inline_html(b.summary)}</summary>", ""]
            lines += _to_md(b.blocks)
            lines += ["</details>", ""]
        elif isinstance(b, Images):
            continue  # a PR comment cannot embed images; the HTML report has them
        else:  # pragma: no cover
            raise TypeError(b)
    return lines


def render_md(review: Review) -> str:
    """Markdown for a pull-request comment (starts with :data:`MARKER`)."""
    return MARKER + "\n" + "\n".join(_to_md(document(review))).rstrip("\n") + "\n"


def _png(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def _to_html(blocks: list[Any]) -> list[str]:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{_inline_html(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p>{_inline_html(b.text)}</p>")
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in b.header)
            body = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in row) + "</tr>" for row in b.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(b, Details):
            out.append(f"<details><summary>{_inline_html(b.summary)}</summary>")
            out += _to_html(b.blocks)
            out.append("</details>")
        elif isinstance(b, Images):
            for caption, base_png, head_png in b.items:
                figs = []
                for side, png in (("base", base_png), ("head", head_png)):
                    if png is not None:
                        caption_html = f"<figcaption>{side}: {html.escape(caption)}</figcaption>"
                        figs.append(f"<figure>{_png(png, f'{side} {caption}')}{caption_html}</figure>")
                out.append('<div class="plots">' + "".join(figs) + "</div>")
        else:  # pragma: no cover
            raise TypeError(b)
    return out


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #1f2328; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { border: 1px solid #d0d7de; padding: .25em .6em; text-align: left; }
th { background: #f6f8fa; }
code { background: #f6f8fa; padding: 0 .2em; }
details { margin: .4em 0; padding: .3em .6em; border: 1px solid #d0d7de; border-radius: 6px; }
summary { cursor: pointer; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; }
figure img { max-width: 34em; border: 1px solid #d0d7de; }
"""


def render_html(review: Review) -> str:
    """A standalone HTML page: the Markdown report's content with the PNG plots embedded (base64)."""
    title = html.escape(f"Pipeline review: {review.base} → {review.head}")
    body = "\n".join(_to_html(document(review, images=True)))
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_CSS}</style></head>\n<body>\n{MARKER}\n{body}\n</body></html>\n"
    )


# --------------------------------------------------------------------------- I/O: reading a side


class _Workspace:
    """The working tree."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.label = "workspace"
        self.notes: list[str] = []

    def read(self, path: PurePosixPath | Path) -> bytes | None:
        p = self.root / path
        return p.read_bytes() if p.is_file() else None

    def listdir(self, folder: PurePosixPath | Path) -> list[str]:
        p = self.root / folder
        return sorted(q.name for q in p.iterdir() if q.is_file()) if p.is_dir() else []


class _Revision:
    """A git revision or experiment: params.yaml from git, outputs through DVC (dvc.lock + the local cache)."""

    def __init__(self, root: Path, rev: str) -> None:
        from dvc.api import DVCFileSystem
        from dvc.exceptions import DvcException
        from dvc.repo import Repo
        from dvc.scm import resolve_rev
        from scmrepo.git import Git

        try:
            with Repo(str(root)) as repo:
                if not isinstance(repo.scm, Git):
                    raise ReviewError(f"{root}: not a git repository; a review compares with a git revision")
                self.sha = resolve_rev(repo.scm, rev)
        except DvcException as exc:
            raise ReviewError(f"{rev!r}: {exc} (a git revision, branch, tag or experiment name of {root.resolve()})") from None
        self.label = self.sha[:7] if self.sha.startswith(rev) else f"{rev} ({self.sha[:7]})"
        self.fs = DVCFileSystem(repo=str(root), rev=self.sha)
        self.notes: list[str] = []

    def read(self, path: PurePosixPath | Path) -> bytes | None:
        key = PurePosixPath(path).as_posix()
        try:
            return self.fs.read_bytes(key)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        except Exception as exc:  # noqa: BLE001  (a tracked output absent from the local cache, ...)
            self.notes.append(f"{_code(key)}: {_unreadable(exc)}")
            return None

    def listdir(self, folder: PurePosixPath | Path) -> list[str]:
        key = PurePosixPath(folder).as_posix()
        try:
            entries = self.fs.ls(key, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except Exception as exc:  # noqa: BLE001
            self.notes.append(f"{_code(key)}: {_unreadable(exc)}")
            return []
        return sorted(PurePosixPath(e["name"]).name for e in entries if e.get("type") == "file")


def _unreadable(exc: Exception) -> str:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"not in the local DVC cache? ({type(exc).__name__}: {first}; `dvc pull`, or `dvc repro` at that revision)"


def stale_stages(params: Mapping[str, Any], lock: Mapping[str, Any]) -> list[str]:
    """The stages of ``dvc.lock`` whose recorded params differ from ``params``: their outputs predate the params.

    DVC keeps the entries of ``foreach`` items that no longer exist (a removed
    variant's ``train@<name>``): an item whose params are gone is not stale.
    """
    stale = []
    for stage, entry in ((lock or {}).get("stages") or {}).items():
        recorded = ((entry or {}).get("params") or {}).get("params.yaml") or {}
        found = {dotted: _lookup(params, str(dotted)) for dotted in recorded}
        if "@" in stage and MISSING in found.values():
            continue
        if any(found[dotted] != value for dotted, value in recorded.items()):
            stale.append(stage)
    return stale


def _lookup(params: Mapping[str, Any], dotted: str) -> Any:
    node: Any = params
    for part in dotted.split("."):
        node = node.get(part, MISSING) if isinstance(node, Mapping) else MISSING
    return node


def _json(reader: _Workspace | _Revision, path: Path, notes: list[str]) -> dict[str, Any] | None:
    data = reader.read(path)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError as exc:
        notes.append(f"{_code(path.as_posix())}: not JSON ({exc})")
        return None


def load_side(reader: _Workspace | _Revision, images: bool = False) -> Side:
    """Read one side: params.yaml, then the outputs the review compares (what is absent stays absent)."""
    text = reader.read(Path("params.yaml"))
    if text is None:
        raise ReviewError(f"params.yaml: not found in the {reader.label}")
    try:
        params = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ReviewError(f"params.yaml ({reader.label}): not valid YAML: {exc}") from None
    if not isinstance(params, dict):
        raise ReviewError(f"params.yaml ({reader.label}): expected a mapping, got {type(params).__name__}")
    side = Side(label=reader.label, params=params)
    notes: list[str] = []
    for name in reader.listdir(paths.METRICS):
        if name.endswith(".json"):
            found = _json(reader, paths.METRICS / name, notes)
            if found is not None:
                side.metrics[name[: -len(".json")]] = found
    datasets = list(params["datasets"]) if isinstance(params.get("datasets"), Mapping) else list(config.DATASETS)
    for d in datasets:
        if (stats := _json(reader, paths.stats(d), notes)) is not None:
            side.stats[d] = stats
        if (report := _json(reader, paths.validation_report(d), notes)) is not None:
            side.validation[d] = report
    for v in _variant_names(side):
        if (weights := _json(reader, paths.model(v) / "class_weight.json", notes)) is not None:
            side.class_weights[v] = weights
        if (run := _json(reader, paths.model(v) / "mlflow_run.json", notes)) is not None and run.get("run_id"):
            side.runs[v] = str(run["run_id"])
        if images:
            folder = paths.plot_images(v)
            pngs = {n: reader.read(folder / n) for n in reader.listdir(folder) if n.endswith(".png")}
            side.images[v] = {n: b for n, b in pngs.items() if b is not None}
    if images:
        pngs = {n: reader.read(paths.AUGMENTATION / n) for n in reader.listdir(paths.AUGMENTATION) if n.endswith(".png")}
        side.images["augmentation"] = {n: b for n, b in pngs.items() if b is not None}
    if not side.metrics:
        notes.append(f"no {_code(paths.METRICS.as_posix() + '/*.json')} (run `dvc repro` there)")
    side.missing = notes + reader.notes
    notes = []
    lock = reader.read(Path("dvc.lock"))
    if lock is not None:
        try:
            stale = stale_stages(params, yaml.safe_load(lock) or {})
        except yaml.YAMLError:
            stale = []
        if stale:
            shown = ", ".join(_code(s) for s in stale[:6]) + (f" and {len(stale) - 6} more" if len(stale) > 6 else "")
            if isinstance(reader, _Workspace):
                notes.append(f"outputs older than params.yaml (stages {shown}): run `dvc repro` (or `make review`) first")
            else:
                notes.append(
                    f"its dvc.lock was committed out of date with its params.yaml (stages {shown}): "
                    "those outputs came from the params dvc.lock records"
                )
    side.notes = side.missing + notes
    return side


def _threshold(head: Side, workspace: bool) -> float:
    """``review.threshold`` of the head's params (a workspace params.yaml must parse, like for any stage)."""
    try:
        return config.parse(head.params).review.threshold
    except config.ConfigError as exc:
        if workspace:
            raise config.ConfigError(f"params.yaml: {exc}") from None
        head.notes.append(f"params.yaml does not parse ({exc}); threshold {_pct(config.REVIEW_DEFAULT.threshold)}")
        return config.REVIEW_DEFAULT.threshold


BUILT = Path(".dvc/tmp/review")  # rebuilt base revisions, one git worktree per commit (git-ignored by DVC)


def build_base(root: Path, sha: str, label: str) -> _Workspace:
    """Revision ``sha``'s outputs reproduced in a git worktree under ``.dvc/tmp/review/`` on this project's DVC cache.

    Outputs hold run ids and timings, so a fresh ``dvc repro`` never matches the
    hashes a committed ``dvc.lock`` records: on another machine (a fresh clone,
    CI) the revision's outputs are not in the cache. ``dvc repro`` in the
    worktree restores from DVC's run cache every stage that already ran here
    with the same code, params and data (after ``make run`` at that revision:
    all of them) and runs the others. The worktree is kept for the next review.
    """
    folder = root / BUILT / sha
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    def call(cmd: list[str], cwd: Path) -> None:
        done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        if done.returncode:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise ReviewError(f"rebuilding {label} in {folder}: `{' '.join(cmd)}` failed (exit {done.returncode}):\n{tail}")

    if not (folder / ".git").exists():
        shutil.rmtree(folder, ignore_errors=True)
        call(["git", "worktree", "prune"], root)
        call(["git", "worktree", "add", "--detach", str(folder), sha], root)
        call(["dvc", "cache", "dir", "--local", str(root / ".dvc" / "cache")], folder)
    log.info("rebuilding the outputs of %s in %s (dvc repro; the run cache restores what already ran)", label, folder)
    call(["dvc", "repro"], folder)
    reader = _Workspace(folder)
    reader.label = f"{label}, rebuilt"
    return reader


def review(root: Path, base: str, head: str | None = None, images: bool = False, rebuild: bool = False) -> Review:
    """Compare revision ``base`` with the workspace of ``root`` (or with ``head``, an experiment or revision).

    ``rebuild``: when the DVC cache lacks some of ``base``'s outputs, reproduce
    them (:func:`build_base`) and compare with those.
    """
    root = root.resolve()
    base_reader: _Workspace | _Revision = _Revision(root, base)
    head_reader = _Workspace(root) if head is None else _Revision(root, head)
    base_side = load_side(base_reader, images)
    if rebuild and base_side.missing:
        base_side = load_side(build_base(root, base_reader.sha, base_reader.label), images)
    head_side = load_side(head_reader, images)
    return compare(base_side, head_side, _threshold(head_side, head is None))


def missing_at(root: Path, rev: str) -> list[str]:
    """What of revision ``rev``'s outputs cannot be read here (e.g. absent from the DVC cache); [] when all can."""
    return load_side(_Revision(root.resolve(), rev)).missing


def run(
    base: str,
    head: str | None = None,
    fmt: str | None = None,
    output: Path | None = None,
    root: Path = Path("."),
    rebuild: bool = False,
) -> str:
    """``python -m pipeline report --base REV [--head EXP] [--format md|html] [--output FILE] [--rebuild-base]``.

    The format defaults to the output's suffix (``.html``), else Markdown; without
    ``--output`` the report goes to stdout. Returns the text.
    """
    fmt = fmt or ("html" if output is not None and output.suffix.lower() in (".html", ".htm") else "md")
    result = review(root, base, head, images=fmt == "html", rebuild=rebuild)
    text = render_html(result) if fmt == "html" else render_md(result)
    if output is None:
        sys.stdout.write(text)
    else:
        files.write_text(output, text)
        changed = sum(v.changed for v in result.variants)
        log.info(
            "review %s -> %s: %d of %d variants changed; %s", result.base, result.head, changed, len(result.variants), output
        )
    for note in result.notes:
        log.warning("%s", note.replace("`", ""))
    return text
