"""The report as a list of blocks (headings, paragraphs, tables, collapsed sections, plots), rendered by :mod:`.render`.

Inline text uses `code` and **bold** (and ``<sub>``); both renderers escape everything else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline import paths
from pipeline.metrics import sense
from pipeline.review.diff import MISSING, Change, MetricDelta, Review, ValidationReview, VariantReview

FLAG = "⚠"
SENSES = {"higher": "higher is better", "lower": "lower is better", "faster": "higher is faster", "neutral": ""}
PlotItem = tuple[str, bytes | None, bytes | None]  # caption, base PNG (when it differs from the head's), head PNG


# --------------------------------------------------------------------------- blocks


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
    """A collapsed section."""

    summary: str
    blocks: list[Block]


@dataclass
class Images:
    """PNG plots; HTML only."""

    items: list[PlotItem]


Block = Heading | Para | Bullets | Table | Details | Images


# --------------------------------------------------------------------------- inline text


def code(text: Any) -> str:
    """``text`` as inline code (backticks inside dropped)."""
    return f"`{str(text).replace('`', '')}`"


def pct(fraction: float) -> str:
    """0.02 -> ``2 %``."""
    return f"{fraction * 100:g} %"


def _signed_pct(rel: float) -> str:
    return f"{'+' if rel > 0 else '−'}{abs(rel) * 100:.1f} %"


def fmt_number(value: float | None) -> str:
    """A metric value: thousands separated, about four significant digits; — when absent, n/a for NaN."""
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
    """The absolute and relative change of a metric, :data:`FLAG` when beyond the threshold."""
    d = m.delta
    if d is None or math.isnan(d):
        return "—"
    if m.verdict == "same":
        return "0"
    text = ("+" if d > 0 else "−") + fmt_number(abs(d))
    if m.relative is not None:
        text += f" ({_signed_pct(m.relative)})"
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


def _run(run_id: str | None) -> str:
    return code(run_id) if run_id else "—"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _change_table(changes: list[Change], what: str = "key") -> Table:
    return Table([what, "base", "head"], [[code(c.key), fmt_value(c.old), fmt_value(c.new)] for c in changes])


# --------------------------------------------------------------------------- the overview


def _summary(review: Review) -> Para:
    variants = review.variants
    new = [v.name for v in variants if v.status == "new"]
    removed = [v.name for v in variants if v.status == "removed"]
    flagged = sum(len(v.flagged) for v in variants)
    parts = [
        f"**{sum(v.changed for v in variants)} of {len(variants)} variants changed**",
        f"{sum(v.status == 'kept' and bool(v.params) for v in variants)} with param changes",
        f"{len(new)} new" + (f" ({', '.join(code(n) for n in new)})" if new else ""),
        f"{len(removed)} removed" + (f" ({', '.join(code(n) for n in removed)})" if removed else ""),
        f"{_plural(flagged, 'metric change')} above the {pct(review.threshold)} threshold"
        + (f" {FLAG}" if flagged else "")
        + f" ({code('review.threshold')})",
    ]
    return Para("; ".join(parts) + ".")


def _headline_row(v: VariantReview) -> list[str]:
    key = v.key_metric
    changed = [c.key for c in v.params]
    params_cell = ", ".join(code(k) for k in changed[:2]) + (f" +{len(changed) - 2}" if len(changed) > 2 else "")
    if v.status != "kept":
        params_cell = ""
    if key is None:
        return [code(v.name), v.dataset or "", "—", "—", "—", v.status if v.status != "kept" else "n/a", params_cell]
    if v.status in ("new", "removed"):
        verdict_text = v.status
    elif key.base is None or key.head is None:
        verdict_text = f"no {'base' if key.base is None else 'head'} value"
    else:
        verdict_text = key.verdict
    base_to_head = f"{fmt_number(key.base)} → {fmt_number(key.head)}"
    return [code(v.name), v.dataset or "", key.name, base_to_head, fmt_delta(key), verdict_text, params_cell]


def _provenance(review: Review) -> list[Block]:
    """Where the base's outputs came from, when it was rebuilt: how many from the cache, the remote, rebuilt (named)."""
    if not review.base_sources:
        return []
    counts: dict[str, list[str]] = {}
    for path, source in review.base_sources.items():
        counts.setdefault(source, []).append(path)
    parts = []
    for source, outs in sorted(counts.items(), key=lambda item: item[0] == "rebuilt"):
        if source == "rebuilt":
            shown = ", ".join(code(o) for o in outs[:6]) + (f" +{len(outs) - 6}" if len(outs) > 6 else "")
            parts.append(f"{len(outs)} rebuilt ({shown})")
        else:
            parts.append(f"{len(outs)} from the {source}")
    note = f" ({review.base_source_note})" if review.base_source_note else ""
    return [Para(f"**Base outputs** ({len(review.base_sources)} in its `dvc.lock`): {'; '.join(parts)}{note}.")]


def _overview(review: Review) -> list[Block]:
    """The title, the summary, where the base's outputs came from, one headline row per variant, the notes."""
    blocks: list[Block] = [Heading(2, f"Pipeline review: {code(review.base)} → {code(review.head)}"), _summary(review)]
    blocks += _provenance(review)
    if review.variants:
        header = ["variant", "dataset", "key metric", "base → head", "delta", "verdict", "params changed"]
        blocks.append(Table(header, [_headline_row(v) for v in review.variants]))
    if review.notes:
        what = "**Notes** (a value that could not be read shows as —)"
        if len(review.notes) <= 3:
            blocks += [Para(what + ":"), Bullets(review.notes)]
        else:
            blocks.append(Details(f"{what} ({len(review.notes)} notes)", [Bullets(review.notes)]))
    return blocks


# --------------------------------------------------------------------------- a variant


def _variant_summary(v: VariantReview, threshold: float) -> str:
    parts = [f"**{v.name}**"]
    kept = v.status == "kept"
    if not kept:
        parts.append(f"{v.status} variant")
    key = v.key_metric
    if key and kept:
        parts.append(f"{key.name} {key.verdict}" + (f" ({_signed_pct(key.relative)})" if key.relative else ""))
    if v.params and kept:
        parts.append(f"{_plural(len(v.params), 'param')} changed")
    others = len(v.metric_changes) - (1 if key and key.verdict != "same" else 0)
    if others > 0 and kept:
        parts.append(f"{_plural(others, 'other metric')} changed")
    if v.flagged:
        parts.append(f"{FLAG} {len(v.flagged)} above {pct(threshold)}")
    return ": ".join(parts[:2]) + (", " + ", ".join(parts[2:]) if len(parts) > 2 else "")


def _metric_table(metrics: list[MetricDelta]) -> Table:
    rows = [[m.name, SENSES[sense(m.name)], fmt_number(m.base), fmt_number(m.head), fmt_delta(m), m.verdict] for m in metrics]
    return Table(["metric", "sense", "base", "head", "delta", "verdict"], rows)


def _confusion(change: Change) -> list[Block]:
    old, new = (c if isinstance(c, Mapping) else {"matrix": c} for c in (change.old, change.new))
    labels = ", ".join(map(str, new.get("labels") or []))
    return [
        Para(f"**Confusion matrix** (rows: actual, columns: predicted{'; ' + labels if labels else ''})"),
        Table(["base", "head"], [[fmt_value(old.get("matrix")), fmt_value(new.get("matrix"))]]),
    ]


def _variant_details(v: VariantReview, review: Review, images: bool) -> Details:
    """A changed variant: its params, metrics, confusion matrix, class weights, runs (and plots)."""
    inner: list[Block] = []
    if v.params:
        what = "as written" if v.status != "kept" else "resolved: the variant's overrides over the shared `train` section"
        inner += [Para(f"**Params** ({what})"), _change_table(v.params)]
    if v.metrics:
        inner += [Para("**Metrics** (test split)"), _metric_table(v.metrics)]
    if v.confusion:
        inner += _confusion(v.confusion)
    if v.class_weights:
        where = code((paths.model(v.name) / "class_weight.json").as_posix())
        inner += [Para(f"**Class weights** ({where})"), _change_table(v.class_weights, "class")]
    inner.append(Para(f"**MLflow run**: base {_run(v.run_base)} → head {_run(v.run_head)}"))
    if images and (plots := _plots(review, v.name)):
        inner += [Para("**Plots**"), Images(plots)]
    return Details(_variant_summary(v, review.threshold), inner)


def _plots(review: Review, name: str) -> list[PlotItem]:
    """Each plot of the head's ``name``, with the base's beside it when it differs (a removed plot: the base's alone)."""
    base, head = review.base_images.get(name, {}), review.head_images.get(name, {})
    items = []
    for plot in list(head) + [n for n in base if n not in head]:
        b, h = base.get(plot), head.get(plot)
        items.append((f"{plot} (unchanged)" if b == h else plot, b if b != h else None, h))
    return items


def _unchanged_plots(review: Review) -> list[Block]:
    shown = {v.name: plots for v in review.variants if not v.changed and (plots := _plots(review, v.name))}
    inner: list[Block] = [b for name, plots in shown.items() for b in (Para(code(name)), Images(plots))]
    return [Details(f"**Plots of the unchanged variants** ({len(shown)})", inner)] if shown else []


# --------------------------------------------------------------------------- data and pipeline-wide


def _pipeline_params(changes: list[Change]) -> Block:
    if changes:
        return Details(f"**Pipeline-wide params**: {len(changes)} changed", [_change_table(changes)])
    return Para("**Pipeline-wide params**: none changed.")


def _validation_row(val: ValidationReview) -> list[str]:
    cells = {c.key: c for c in val.counts}

    def cell(key: str) -> str:
        c = cells.get(key)
        if c is None:
            return ""
        return fmt_value(c.new) if c.old == c.new else f"{fmt_value(c.old)} → {fmt_value(c.new)}"

    return [val.dataset, *(cell(k) for k in ("files", "accepted", "rejected_count", "warnings_count", "success"))]


def _validation_changes(val: ValidationReview) -> list[Block]:
    name = code(val.dataset)
    blocks: list[Block] = []
    if labels := [c for c in val.counts if c.key.startswith("per_label.") and c.old != c.new]:
        blocks += [Para(f"{name}: accepted per label"), _change_table(labels, "label")]
    if val.newly_rejected:
        blocks += [Para(f"{name}: newly rejected"), Bullets([code(x) for x in val.newly_rejected])]
    if val.no_longer_rejected:
        blocks += [Para(f"{name}: no longer rejected"), Bullets([code(x) for x in val.no_longer_rejected])]
    return blocks


def _validation(validation: list[ValidationReview]) -> list[Block]:
    """Accepted/rejected counts of every dataset, then what changed in each."""
    if not validation:
        return []
    header = ["dataset", "files", "accepted", "rejected", "warnings", "suites passed"]
    inner: list[Block] = [Table(header, [_validation_row(val) for val in validation])]
    changed = [val for val in validation if val.changed]
    for val in changed:
        inner += _validation_changes(val)
    what = ", ".join(code(val.dataset) for val in changed) + " changed" if changed else "unchanged"
    return [Details(f"**Validation** (accepted/rejected files): {what}", inner)]


def _statistics(stats: dict[str, list[Change]]) -> list[Block]:
    what = "**Train-split statistics** (normalization mean/std, class weights)"
    changed = {d: changes for d, changes in stats.items() if changes}
    if changed:
        inner: list[Block] = [b for d, c in changed.items() for b in (Para(code(paths.stats(d).as_posix())), _change_table(c))]
        return [Details(f"{what}: {', '.join(code(d) for d in changed)} changed", inner)]
    return [Para(f"{what}: unchanged.")] if stats else []


def _runs(variants: list[VariantReview]) -> list[Block]:
    rows = [[code(v.name), _run(v.run_base), _run(v.run_head)] for v in variants]
    return [Details("**MLflow runs** of each side", [Table(["variant", "base run", "head run"], rows)])] if rows else []


def _legend(threshold: float, images: bool) -> Para:
    legend = (
        "Verdicts follow each metric's sense (accuracy, precision, recall, F1, ROC AUC: higher is better; "
        "MAPE, MAE, RMSE: lower is better; images/s: higher is faster; others neutral). "
        f"{FLAG}: relative change above {pct(threshold)} ({code('review.threshold')}); timings are never marked."
    )
    if not images:
        legend += " Plots: in the HTML report (`python -m pipeline report --base <rev> --format html`)."
    return Para(f"<sub>{legend}</sub>")


# --------------------------------------------------------------------------- the whole


def document(review: Review, images: bool = False) -> list[Block]:
    """The report as blocks; ``images`` adds the PNG plots (HTML)."""
    blocks = _overview(review)
    blocks += [_variant_details(v, review, images) for v in review.variants if v.changed]
    if images:
        blocks += _unchanged_plots(review)
    blocks += [Heading(3, "Data and pipeline-wide params"), _pipeline_params(review.pipeline_params)]
    blocks += _validation(review.validation) + _statistics(review.stats)
    if images and (augmentation := _plots(review, "augmentation")):
        blocks.append(Details("**Augmentation preview**", [Images(augmentation)]))
    return blocks + _runs(review.variants) + [_legend(review.threshold, images)]
