"""The review report (``python -m pipeline report --base``): pure diffs and renderers, then end to end.

The end-to-end test builds a throw-away git + DVC repository running a tiny
fake pipeline (a few lines of Python per stage, no TensorFlow) that writes the
same files as the real one (metrics, stats, validation, class weights, MLflow
run ids, plots), commits a base, changes one variant's learning rate,
reproduces, and reads the report and the comment body that the pull-request
workflow's script posts.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import config, review
from pipeline.config import ConfigError
from pipeline.review import MISSING, Change, Side, pr_comment
from tests.pipeline_project import REPO

RAW = yaml.safe_load((REPO / "params.yaml").read_text())


# --------------------------------------------------------------------------- params section


def test_review_threshold_parses_and_defaults() -> None:
    assert config.parse(copy.deepcopy(RAW)).review.threshold == RAW["review"]["threshold"]
    older = {k: v for k, v in copy.deepcopy(RAW).items() if k != "review"}  # a revision before the section existed
    assert config.parse(older).review == config.REVIEW_DEFAULT


@pytest.mark.parametrize(
    ("section", "fragment"),
    [
        ({"treshold": 0.1}, "review.treshold: unknown key"),
        ({"threshold": -1}, "review.threshold"),
        ({"threshold": "2%"}, "review.threshold"),
    ],
)
def test_review_section_errors_name_the_key(section: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        config.parse({**copy.deepcopy(RAW), "review": section})


# --------------------------------------------------------------------------- metrics


def verdicts(base: dict, head: dict, threshold: float = 0.02) -> dict[str, tuple[str, bool]]:
    return {m.name: (m.verdict, m.flagged) for m in review.diff_metrics(base, head, threshold)}


def test_direction_follows_the_metric_sense() -> None:
    out = verdicts(
        {
            "accuracy": 0.80,
            "mape": 30.0,
            "rmse": 10.0,
            "roc_auc": 0.9,
            "images_per_s": 100.0,
            "parameters": 10,
            "train_seconds": 5.0,
        },
        {
            "accuracy": 0.90,
            "mape": 20.0,
            "rmse": 11.0,
            "roc_auc": 0.8,
            "images_per_s": 50.0,
            "parameters": 20,
            "train_seconds": 9.0,
        },
    )
    assert out["accuracy"][0] == "better"  # higher is better
    assert out["mape"][0] == "better"  # lower is better
    assert out["rmse"][0] == "worse"
    assert out["roc_auc"][0] == "worse"
    assert out["images_per_s"][0] == "slower"  # neutral for quality, but say which way is faster
    assert out["parameters"][0] == "up"  # neutral
    assert out["train_seconds"] == ("up", False)  # timings are never marked


def test_threshold_marker_is_relative() -> None:
    out = verdicts({"accuracy": 0.80, "f1": 0.80, "mae": 100.0}, {"accuracy": 0.81, "f1": 0.82, "mae": 100.0}, threshold=0.02)
    assert out["accuracy"] == ("better", False)  # +1.25 %
    assert out["f1"] == ("better", True)  # +2.5 %
    assert out["mae"] == ("same", False)
    assert verdicts({"accuracy": 0.80}, {"accuracy": 0.81}, threshold=0.01)["accuracy"] == ("better", True)
    assert verdicts({"mae": 0}, {"mae": 1})["mae"] == ("worse", True)  # from zero: always beyond


def test_metrics_on_one_side_nan_and_non_numbers() -> None:
    out = verdicts(
        {"accuracy": 0.5, "roc_auc": float("nan"), "gone": 1.0, "task": "x", "flag": True, "confusion_matrix": {"matrix": [[1]]}},
        {"accuracy": 0.5, "roc_auc": 0.7, "knn_accuracy": 0.6, "task": "y"},
    )
    assert out == {
        "accuracy": ("same", False),
        "roc_auc": ("n/a", False),
        "knn_accuracy": ("new", False),
        "gone": ("removed", False),
    }


# --------------------------------------------------------------------------- params


def with_variants(**changes: Any) -> dict:
    raw = copy.deepcopy(RAW)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        if value is MISSING:
            del node[last]
        else:
            node[last] = value
    return raw


def test_param_diff_names_the_variant_override_key() -> None:
    head = with_variants(variants__lenet5__train={"learning_rate": 0.01})
    per_variant, pipeline_wide = review.diff_params(RAW, head)
    assert per_variant["lenet5"] == [Change("variants.lenet5.train.learning_rate", 0.001, 0.01)]
    assert all(not changes for name, changes in per_variant.items() if name != "lenet5")
    assert pipeline_wide == []


def test_param_diff_writing_a_default_out_is_no_change() -> None:
    head = with_variants(
        variants__lenet5={
            "dataset": "pets",
            "model": "lenet5",
            "augment": "none",
            "dropout": 0.0,
            "train": {"learning_rate": 0.001},
        }
    )
    per_variant, _ = review.diff_params(RAW, head)
    assert per_variant["lenet5"] == []


def test_shared_train_change_reaches_every_variant_that_does_not_override_it() -> None:
    head = with_variants(train__epochs=5)
    per_variant, pipeline_wide = review.diff_params(RAW, head)
    assert pipeline_wide == [Change("train.epochs", 4, 5)]
    assert per_variant["lenet5"] == [Change("train.epochs", 4, 5)]
    assert per_variant["mlp_tabular"] == []  # overrides epochs: 60 either way
    assert per_variant["transfer_features"] == []


def test_shared_transfer_change_is_named_by_its_shared_key_unless_the_variant_overrides_it() -> None:
    head = with_variants(
        transfer__source="houses_rooms", variants__transfer_features_rooms__transfer={"source": "pets_unlabeled"}
    )
    per_variant, pipeline_wide = review.diff_params(RAW, head)
    assert pipeline_wide == [Change("transfer.source", "pets_unlabeled", "houses_rooms")]
    assert per_variant["transfer_features"] == [Change("transfer.source", "pets_unlabeled", "houses_rooms")]
    rooms = [Change("variants.transfer_features_rooms.transfer.source", "houses_rooms", "pets_unlabeled")]
    assert per_variant["transfer_features_rooms"] == rooms
    assert per_variant["transfer_finetune_rooms"] == []  # overrides the source: houses_rooms either way


def test_pipeline_wide_params_are_listed_once() -> None:
    head = with_variants(prepare__pets__image_size=128, augment__policies__standard__flip=False)
    per_variant, pipeline_wide = review.diff_params(RAW, head)
    flip = Change("augment.policies.standard.flip", True, False)
    assert pipeline_wide == [Change("prepare.pets.image_size", 96, 128), flip]
    # a policy reaches the variants that train with it, like the shared train section
    assert {name: changes for name, changes in per_variant.items() if changes} == {"cnn_augmented": [flip]}


def test_new_and_removed_variants() -> None:
    head = with_variants(variants__lenet6={"dataset": "pets", "model": "lenet5", "width": 2.0}, variants__zfnet=MISSING)
    per_variant, _ = review.diff_params(RAW, head)
    assert per_variant["lenet6"] == [
        Change("variants.lenet6.dataset", MISSING, "pets"),
        Change("variants.lenet6.model", MISSING, "lenet5"),
        Change("variants.lenet6.width", MISSING, 2.0),
    ]
    assert Change("variants.zfnet.dropout", 0.5, MISSING) in per_variant["zfnet"]
    result = review.compare(side("base", RAW, {"zfnet": ACC(0.8)}), side("head", head, {"lenet6": ACC(0.7)}), 0.02)
    status = {v.name: v.status for v in result.variants}
    assert status["lenet6"] == "new" and status["zfnet"] == "removed" and status["lenet5"] == "kept"
    md = review.render_md(result)
    assert "| `lenet6` | pets | accuracy | — → 0.7000 | — | new |" in md
    assert "| `zfnet` | pets | accuracy | 0.8000 → — | — | removed |" in md
    assert "1 new (`lenet6`); 1 removed (`zfnet`)" in md


def test_stale_stages_compare_dvc_lock_with_params() -> None:
    lock = {
        "stages": {
            "train@a": {"params": {"params.yaml": {"train": {"epochs": 4}, "variants.a": {"model": "x"}}}},
            "train@b": {"params": {"params.yaml": {"variants.b": {"model": "y"}}}},
            "download@pets": {"cmd": "python -m pipeline download pets"},
        }
    }
    params = {"train": {"epochs": 4}, "variants": {"a": {"model": "x"}, "b": {"model": "z"}}}
    assert review.stale_stages(params, lock) == ["train@b"]
    assert review.stale_stages({"train": {"epochs": 5}, "variants": {"a": {"model": "x"}, "b": {"model": "y"}}}, lock) == [
        "train@a"
    ]
    # DVC keeps a removed variant's entry in dvc.lock: that is not a stale output
    assert review.stale_stages({"train": {"epochs": 4}, "variants": {"b": {"model": "y"}}}, lock) == []
    # nor the entry of a stage dvc.yaml no longer has (pretrain became pretrain@<source>)
    renamed = {"stages": {**lock["stages"], "pretrain": {"params": {"params.yaml": {"pretrain": {"epochs": 12}}}}}}
    assert review.stale_stages(params, renamed) == ["train@b", "pretrain"]
    assert review.stale_stages(params, renamed, {"train": True, "download": True, "pretrain": True}) == ["train@b"]
    assert review.stale_stages(params, renamed, {"train": True, "download": True}) == ["train@b"]


def test_an_old_params_file_is_compared_as_written() -> None:
    old = copy.deepcopy(RAW)
    old["variants"]["lenet5"]["colour"] = "red"  # today's schema refuses it
    resolved = review.resolve_variants(old)
    assert resolved["lenet5"]["colour"] == "red"
    assert resolved["lenet5"]["train.learning_rate"] == RAW["train"]["learning_rate"]


# --------------------------------------------------------------------------- data and rendering


def ACC(value: float) -> dict:  # noqa: N802
    return {"task": "binary_classification", "dataset": "pets", "accuracy": value, "train_seconds": 3.0}


def side(label: str, params: dict, metrics: dict, **kw: Any) -> Side:
    return Side(label=label, params=params, metrics=metrics, **kw)


def test_stats_and_validation_changes() -> None:
    stats = {
        "examples": 10,
        "image": {"mean": [1.0, 2.0, 3.0], "std": [1.0, 1.0, 1.0], "pixels": 5},
        "class_weights": {"balanced": {"Cat": 0.5}},
    }
    moved = copy.deepcopy(stats)
    moved["image"]["mean"] = [1.5, 2.0, 3.0]
    moved["image"]["pixels"] = 6  # not compared: derived
    moved["class_weights"]["balanced"]["Cat"] = 0.6
    assert review.diff_stats(stats, moved) == [
        Change("image.mean", [1.0, 2.0, 3.0], [1.5, 2.0, 3.0]),
        Change("class_weights.balanced.Cat", 0.5, 0.6),
    ]
    val = review.diff_validation(
        "pets",
        {"files": 10, "accepted": 9, "rejected_count": 1, "rejected": [{"path": "a.jpg", "reason": "empty"}]},
        {
            "files": 10,
            "accepted": 8,
            "rejected_count": 2,
            "rejected": [{"path": "a.jpg", "reason": "empty"}, {"path": "b.jpg", "reason": "truncated"}],
        },
    )
    assert val.changed and val.newly_rejected == ["b.jpg: truncated"] and val.no_longer_rejected == []
    result = review.compare(
        side("base", RAW, {}, stats={"pets": stats}, validation={"pets": {"files": 10, "accepted": 9, "rejected_count": 1}}),
        side("head", RAW, {}, stats={"pets": moved}, validation={"pets": {"files": 10, "accepted": 8, "rejected_count": 2}}),
        0.02,
    )
    md = review.render_md(result)
    assert "| pets | 10 | 9 → 8 | 1 → 2 |" in md
    assert "| `image.mean` | [1, 2, 3] | [1.5, 2, 3] |" in md
    assert "| `class_weights.balanced.Cat` | 0.5 | 0.6 |" in md


def test_markdown_and_html_render_the_same_review() -> None:
    head = with_variants(variants__lenet5__train={"learning_rate": 0.01})
    png = b"\x89PNG\r\n\x1a\nfake"
    result = review.compare(
        side(
            "main",
            RAW,
            {"lenet5": ACC(0.80), "alexnet": ACC(0.70)},
            runs={"lenet5": "r1", "alexnet": "r2"},
            images={"lenet5": {"roc.png": png}},
        ),
        side(
            "workspace",
            head,
            {"lenet5": ACC(0.90), "alexnet": ACC(0.70)},
            runs={"lenet5": "r3", "alexnet": "r2"},
            images={"lenet5": {"roc.png": png + b"2"}, "augmentation": {"pets.png": png}},
        ),
        0.02,
    )
    md = review.render_md(result)
    assert md.startswith(review.MARKER + "\n")
    assert (
        "| `lenet5` | pets | accuracy | 0.8000 → 0.9000 | +0.1000 (+12.5 %) ⚠ | better | `variants.lenet5.train.learning_rate` |"
        in md
    )
    assert "| `alexnet` | pets | accuracy | 0.7000 → 0.7000 | 0 | same |  |" in md
    assert "<summary><b>lenet5</b>: accuracy better (+12.5 %), 1 param changed, ⚠ 1 above 2 %</summary>" in md
    assert "<summary><b>alexnet</b>" not in md  # nothing changed: no details
    assert "**MLflow run**: base `r1` → head `r3`" in md
    assert "data:image/png" not in md
    page = review.render_html(result)
    assert page.startswith("<!DOCTYPE html>") and review.MARKER in page
    assert "<code>variants.lenet5.train.learning_rate</code>" in page
    assert page.count("data:image/png;base64,") == 3  # lenet5's roc base and head (they differ), the augmentation preview
    assert "<summary><b>lenet5</b>" in page


def test_pure_modules_do_not_import_tensorflow() -> None:
    code = "import sys, pipeline.review, pipeline.stages.report; sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_review_modules_import_no_stage_and_no_tensorflow() -> None:
    modules = ", ".join(f"pipeline.review.{p.stem}" for p in sorted((REPO / "pipeline" / "review").glob("[!_]*.py")))
    code = (
        f"import sys, {modules}; "
        "sys.exit(', '.join(m for m in sys.modules if m.startswith(('pipeline.stages', 'tensorflow', 'keras'))) or None)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (0, "")


# --------------------------------------------------------------------------- the PR comment (pipeline.review.pr_comment)


class FakeGitHub:
    def __init__(self, comments: list[dict]) -> None:
        self.comments = comments
        self.calls: list[tuple[str, str]] = []

    def __call__(self, method: str, path: str, body: dict | None) -> Any:
        self.calls.append((method, path.split("?")[0]))
        if method == "GET":
            page = int(path.rsplit("&page=", 1)[1])
            return self.comments[(page - 1) * 100 : page * 100]
        if method == "PATCH":
            return {"html_url": f"patched {path.rsplit('/', 1)[1]}"}
        return {"html_url": "posted"}


def test_comment_is_updated_in_place_else_created() -> None:
    human = {"id": 1, "body": f"quoting {review.MARKER}", "user": {"login": "alice", "type": "User"}}
    ours = {"id": 7, "body": f"{review.MARKER}\nold", "user": {"login": pr_comment.BOT, "type": "Bot"}}
    filler = [{"id": 100 + i, "body": "lgtm", "user": {"login": "bob"}} for i in range(120)]
    api = FakeGitHub([human, *filler, ours])  # ours is on the second page
    assert pr_comment.upsert(api, "o/r", 5, "new body") == ("updated", "patched 7")
    assert api.calls[-1] == ("PATCH", "/repos/o/r/issues/comments/7")
    api = FakeGitHub([human])
    assert pr_comment.upsert(api, "o/r", 5, "new body") == ("created", "posted")
    assert api.calls[-1] == ("POST", "/repos/o/r/issues/5/comments")


def test_long_bodies_are_cut_after_a_whole_section() -> None:
    section = "<details>\n<summary>x</summary>\n\n" + "y" * 100 + "\n</details>\n"
    body = pr_comment.fit("# report\n" + section * 50, limit=1000)
    assert body.startswith(review.MARKER) and len(body) <= 1000
    assert body.count("<details>") == body.count("</details>")
    assert "artifact" in body


# --------------------------------------------------------------------------- end to end: git + DVC + a fake pipeline

FAKE_PIPELINE = '''
"""A stand-in pipeline: each stage writes what the real one does, computed from params.yaml."""
import hashlib, json, sys
from pathlib import Path
import yaml

P = yaml.safe_load(Path("params.yaml").read_text())

def write(path, obj):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2))

def resolved(name):
    v = P["variants"][name]
    return {**v, "train": {**P["train"], **v.get("train", {})}}

stage, item = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
counts = P["data"]["demo"]["pets"] if item == "pets" else {"house": P["data"]["demo"]["houses"]}
if stage == "validate":
    total = sum(counts.values())
    write(f"reports/validation/{item}.json", {"dataset": item, "success": True, "files": total + 2, "accepted": total,
          "rejected_count": 2, "warnings_count": 0, "per_label": counts,
          "rejected": [{"path": "a/0.jpg", "reason": "empty file (0 bytes)"}, {"path": "a/Thumbs.db", "reason": "not an image"}]})
elif stage == "stats":
    size = P["prepare"]["pets"]["image_size"]
    n = sum(counts.values())
    write(f"data/stats/{item}.json", {"dataset": item, "examples": n,
          "image": {"mean": [size + 0.5, size + 1.5, size + 2.5], "std": [50.0, 51.0, 52.0]},
          "class_weights": {"balanced": {k: n / (len(counts) * c) for k, c in counts.items()}}})
elif stage == "train":
    cfg = resolved(item)
    out = Path("models") / item
    write(out / "config.json", cfg)
    stats = json.loads(Path(f"data/stats/{cfg['dataset']}.json").read_text())
    write(out / "class_weight.json", stats["class_weights"]["balanced"] if cfg["dataset"] == "pets" else {})
    (out / "model.keras").write_bytes(json.dumps(cfg, sort_keys=True).encode())  # the same config, the same bytes
    from pipeline import tracking  # a real run in the project's store, tagged as the train stage tags it
    run_id = tracking.start(item, cfg["dataset"], {"dvc.stage": f"train@{item}"}, {})
    tracking.tag_model(run_id, out / "model.keras")
    tracking.finish(run_id)
    write(f"logs/train/{item}.json", {"run_id": run_id})
elif stage == "evaluate":
    for folder in sorted(p for p in Path("models").iterdir() if p.is_dir()):
        cfg = json.loads((folder / "config.json").read_text())
        lr, epochs = cfg["train"]["learning_rate"], cfg["train"]["epochs"]
        common = {"variant": folder.name, "dataset": cfg["dataset"], "parameters": 1000, "epochs": epochs,
                  "train_seconds": 2.0, "images_per_s": 100.0, "examples": 49}
        if cfg["dataset"] == "pets":
            acc = round(0.8 + 10 * lr, 6)
            m = {"accuracy": acc, "precision": 0.7, "recall": 0.9, "f1": 0.79, "roc_auc": 0.85,
                 "task": "binary_classification", **common}
        else:
            m = {"mae": 1000.0, "rmse": 1500.0, "mape": round(30 + 1000 * lr, 6), "task": "regression", **common}
        write(f"reports/metrics/{folder.name}.json", m)
        png = Path("reports/plots/images") / folder.name / "roc.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        png.write_bytes(b"\\x89PNG\\r\\n\\x1a\\n" + json.dumps(m, sort_keys=True).encode())
'''

FAKE_DVC_YAML = """
stages:
  validate:
    foreach: [pets, houses]
    do:
      cmd: python fake.py validate ${item}
      deps:
        - fake.py
      params:
        - data.demo
      metrics:
        - reports/validation/${item}.json
  stats:
    foreach: [pets, houses]
    do:
      cmd: python fake.py stats ${item}
      deps:
        - fake.py
        - reports/validation/${item}.json
      params:
        - data.demo
        - prepare.pets.image_size
      outs:
        - data/stats/${item}.json
  train:
    foreach: ${variants}
    do:
      cmd: python fake.py train ${key}
      deps:
        - fake.py
        - data/stats/${item.dataset}.json
      params:
        - train
        - variants.${key}
      outs:
        - models/${key}
  evaluate:
    cmd: python fake.py evaluate
    deps:
      - fake.py
      - models
    outs:
      - reports/plots
    metrics:
      - reports/metrics
"""

VARIANTS = ("lenet5", "alexnet", "mlp_tabular")


def sh(cwd: Path, *command: str) -> str:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def set_param(root: Path, dotted: str, value: Any) -> None:
    raw = yaml.safe_load((root / "params.yaml").read_text())
    *parents, last = dotted.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.fixture(scope="module")
def two_commits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A git + DVC repo: the base commit, then one commit that sets variants.lenet5.train.learning_rate 0.001 -> 0.003."""
    root = tmp_path_factory.mktemp("review-repo")
    raw = copy.deepcopy(RAW)
    raw["variants"] = {k: raw["variants"][k] for k in VARIANTS}
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (root / "fake.py").write_text(FAKE_PIPELINE)
    (root / ".gitignore").write_text("/mlflow.db\n/mlartifacts/\n/logs/\n")  # what a real clone ignores too
    (root / "dvc.yaml").write_text(textwrap.dedent(FAKE_DVC_YAML))
    sh(root, "git", "init", "-q", "-b", "main")
    sh(root, "dvc", "init", "-q")
    sh(root, "dvc", "repro", "-q")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-q", "-m", "base")
    base = sh(root, "git", "rev-parse", "HEAD").strip()
    set_param(root, "variants.lenet5.train", {"learning_rate": 0.003})
    out = sh(root, "dvc", "repro")
    assert "Running stage 'train@lenet5'" in out and "Running stage 'train@alexnet'" not in out
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-q", "-m", "lenet5: learning rate 0.003")
    return root, base


def details_of(md: str, variant: str) -> str:
    start = md.index(f"<summary><b>{variant}</b>")
    return md[start : md.index("</details>", start)]


def test_end_to_end_report_shows_exactly_the_change(two_commits: tuple[Path, str]) -> None:
    root, base = two_commits
    # the CLI, in a fresh interpreter: no TensorFlow on the way
    code = (
        "import sys; from pipeline.__main__ import main; rc = main(sys.argv[1:]); "
        "sys.exit(rc or ('tensorflow' in sys.modules and 'tensorflow imported'))"
    )
    sh(root, sys.executable, "-c", code, "report", "--base", base, "--output", "reports/review.md")
    md = (root / "reports/review.md").read_text()

    assert md.startswith(review.MARKER)
    assert f"## Pipeline review: `{base[:7]}` → `workspace`" in md
    assert "**1 of 3 variants changed**; 1 with param changes; 0 new; 0 removed; 1 metric change above the 2 % threshold ⚠" in md
    # headline: the learning rate moved lenet5's accuracy 0.81 -> 0.83 (+2.5 %: beyond 2 %), nothing else moved
    assert (
        "| `lenet5` | pets | accuracy | 0.8100 → 0.8300 | +0.0200 (+2.5 %) ⚠ | better | `variants.lenet5.train.learning_rate` |"
        in md
    )
    assert "| `alexnet` | pets | accuracy | 0.8100 → 0.8100 | 0 | same |  |" in md
    assert "| `mlp_tabular` | houses | mape | 31.00 → 31.00 | 0 | same |  |" in md
    # details: exactly one section, lenet5's, with exactly one param change
    assert md.count("<summary><b>") == 1 + 2  # lenet5; validation and MLflow runs below
    section = details_of(md, "lenet5")
    param_rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert param_rows == ["| `variants.lenet5.train.learning_rate` | 0.001 | 0.003 |"]
    assert "| accuracy | higher is better | 0.8100 | 0.8300 | +0.0200 (+2.5 %) ⚠ | better |" in section
    assert "| epochs |  | 4 | 4 | 0 | same |" in section
    run_ids = {}
    for variant in VARIANTS:
        run_ids[variant] = json.loads((root / "logs/train" / f"{variant}.json").read_text())["run_id"]
    assert f"base `{run_ids['lenet5']}`" not in section and f"→ head `{run_ids['lenet5']}`" in section  # retrained: a new run
    assert f"| `alexnet` | `{run_ids['alexnet']}` | `{run_ids['alexnet']}` |" in md
    assert "**Pipeline-wide params**: none changed." in md
    assert "**Train-split statistics** (normalization mean/std, class weights): unchanged." in md
    assert "| pets | 322 | 320 | 2 | 0 | true |" in md
    assert "**Notes**" not in md

    # the structured result says the same
    result = review.review(root, base)
    assert {v.name: v.params for v in result.variants if v.params} == {
        "lenet5": [Change("variants.lenet5.train.learning_rate", 0.001, 0.003)]
    }
    assert [v.name for v in result.variants if v.changed] == ["lenet5"]
    assert result.pipeline_params == [] and not any(result.stats.values()) and not any(v.changed for v in result.validation)

    # two revisions (no workspace): the same comparison
    between = review.review(root, base, head="HEAD")
    assert between.head.startswith("HEAD (")
    assert [(v.name, v.params) for v in between.variants] == [(v.name, v.params) for v in result.variants]

    # HTML: the same content, the plots embedded (lenet5's changed: base and head side by side)
    sh(root, sys.executable, "-m", "pipeline", "report", "--base", base, "--output", "reports/review.html")
    page = (root / "reports/review.html").read_text()
    assert "<code>variants.lenet5.train.learning_rate</code>" in page
    assert page.count("data:image/png;base64,") == 4  # lenet5 base + head, alexnet, mlp_tabular


def test_end_to_end_pr_comment_dry_run(two_commits: tuple[Path, str]) -> None:
    root, base = two_commits
    assert review.missing_at(root, base) == []
    body = sh(
        root,
        sys.executable,
        "-m",
        "pipeline.review.pr_comment",
        "--base",
        base,
        "--dry-run",
        "--output",
        "reports/review.md",
        "--html",
        "reports/review.html",
    )
    assert body == (root / "reports/review.md").read_text()
    assert body.startswith(review.MARKER + "\n")
    assert "| `variants.lenet5.train.learning_rate` | 0.001 | 0.003 |" in body
    assert body.count("variants.") == 2  # the headline cell and the one details row
    assert (root / "reports/review.html").read_text().count("data:image/png;base64,") == 4


def test_end_to_end_experiment_and_missing_cache(two_commits: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = two_commits
    repo = tmp_path / "repo"
    shutil.copytree(root, repo, symlinks=True)
    # an experiment as the head: dropout of alexnet
    sh(repo, "dvc", "exp", "run", "-q", "-n", "drop25", "-S", "variants.alexnet.dropout=0.25")
    sh(repo, "git", "checkout", "-q", "--", "params.yaml", "dvc.lock")
    sh(repo, "dvc", "checkout", "-q")
    result = review.review(repo, "HEAD", head="drop25")
    assert {v.name: v.params for v in result.variants if v.params} == {"alexnet": [Change("variants.alexnet.dropout", 0.5, 0.25)]}
    assert result.head.startswith("drop25 (")
    # params edited without `dvc repro`: the workspace's outputs are older, and the report says so
    set_param(repo, "variants.alexnet.dropout", 0.1)
    notes = review.review(repo, "HEAD").notes
    assert notes == [
        "workspace: outputs older than params.yaml (stages `train@alexnet`): run `dvc repro` (or `make review`) first"
    ]
    # the base's outputs gone from the DVC cache: listed, the report still renders
    shutil.rmtree(repo / ".dvc" / "cache")
    missing = review.missing_at(repo, "HEAD~1")
    assert any("reports/metrics" in m for m in missing)
    md = review.render_md(review.review(repo, "HEAD~1"))
    assert "Notes</b> (a value that could not be read shows as —)" in md and "not in the local DVC cache?" in md


def test_rebuild_base_reproduces_missing_outputs_in_a_worktree(two_commits: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = two_commits
    repo = tmp_path / "repo"
    shutil.copytree(root, repo, symlinks=True)
    shutil.rmtree(repo / ".dvc" / "cache")  # a fresh clone: the committed hashes are in no cache here
    assert review.missing_at(repo, "HEAD~1")
    result = review.review(repo, "HEAD~1", rebuild=True)
    assert result.base.endswith(", rebuilt") and (repo / review.BUILT).is_dir()
    assert {v.name: v.params for v in result.variants if v.changed} == {
        "lenet5": [Change("variants.lenet5.train.learning_rate", 0.001, 0.003)]
    }
    assert not result.notes
    again = review.review(repo, "HEAD~1", rebuild=True)  # the worktree is reused
    assert [v.name for v in again.variants if v.changed] == ["lenet5"]


def test_unknown_revision_is_one_line(two_commits: tuple[Path, str]) -> None:
    root, _ = two_commits
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "report", "--base", "no-such-branch"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "no-such-branch" in result.stderr
