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

Modules: :mod:`.sides` reads one side (the working tree, or a revision through
DVC, rebuilt where the DVC cache lacks its outputs); :mod:`.diff` compares two
sides (pure); :mod:`.document` lays the comparison out as blocks, which
:mod:`.render` writes as Markdown or HTML; :mod:`.pr_comment` posts the
Markdown on a pull request. TensorFlow is never imported.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from pipeline import config, files, tracking
from pipeline.review.diff import (
    MISSING,
    Change,
    MetricDelta,
    Review,
    Side,
    ValidationReview,
    VariantReview,
    compare,
    diff_metrics,
    diff_params,
    diff_stats,
    diff_validation,
    resolve_variants,
)
from pipeline.review.document import pct
from pipeline.review.render import MARKER, render_html, render_md
from pipeline.review.sides import BUILT, ReviewError, Revision, Workspace, build_base, load_side, missing_at, stale_stages

__all__ = [
    "BUILT",
    "MARKER",
    "MISSING",
    "Change",
    "MetricDelta",
    "Review",
    "ReviewError",
    "Side",
    "ValidationReview",
    "VariantReview",
    "compare",
    "diff_metrics",
    "diff_params",
    "diff_stats",
    "diff_validation",
    "missing_at",
    "render_html",
    "render_md",
    "resolve_variants",
    "review",
    "run",
    "stale_stages",
]

log = logging.getLogger(__name__)


def _threshold(head: Side, workspace: bool) -> float:
    """``review.threshold`` of the head's params (a workspace params.yaml must parse, like for any stage)."""
    try:
        return config.parse(head.params).review.threshold
    except config.ConfigError as exc:
        if workspace:
            raise config.ConfigError(f"params.yaml: {exc}") from None
        head.notes.append(f"params.yaml does not parse ({exc}); threshold {pct(config.REVIEW_DEFAULT.threshold)}")
        return config.REVIEW_DEFAULT.threshold


def review(root: Path, base: str, head: str | None = None, images: bool = False, rebuild: bool = False) -> Review:
    """Compare revision ``base`` with the workspace of ``root`` (or with ``head``, an experiment or revision).

    ``rebuild``: when the DVC cache lacks some of ``base``'s outputs, reproduce
    them (:func:`.sides.build_base`) and compare with those.
    """
    root = root.resolve()
    base_reader = Revision(root, base)
    head_reader = Workspace(root) if head is None else Revision(root, head)
    base_side = load_side(base_reader, images)
    if rebuild and base_side.missing:
        base_side = load_side(build_base(root, base_reader.sha, base_reader.label), images)
    head_side = load_side(head_reader, images)
    for side in (base_side, head_side):
        _find_runs(root, side)
    return compare(base_side, head_side, _threshold(head_side, head is None))


def _find_runs(root: Path, side: Side) -> None:
    """Each variant's MLflow run: the one that trained its model file (tagged with its md5), in the project's store."""
    variants = side.params.get("variants") if isinstance(side.params.get("variants"), dict) else {}
    try:
        for name, md5 in side.models.items():
            dataset = (variants.get(name) or {}).get("dataset")
            if isinstance(dataset, str) and (run := tracking.find_model_run(f"train@{name}", md5, dataset, root)):
                side.runs[name] = run
    except Exception as exc:  # noqa: BLE001 - a tracking server down must not cost the review
        side.notes.append(f"MLflow runs not looked up ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")


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
