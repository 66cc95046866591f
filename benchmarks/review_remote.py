"""Review of a one-variant change on a fresh clone: with the DVC remote against without it (``--rebuild-base`` alone).

Needs no S3 stack: the remote is a local folder (``dvc remote add --local -d``),
which is what the team stack's S3 bucket stands for. In a throw-away clone
of this project (its working tree committed) the demo pipeline runs at a
base commit, whose ``dvc.lock`` is committed and whose outputs and run cache
are pushed to the folder; a second commit sets lenet5's learning rate
0.001 -> 0.003. Then two fresh clones of that each run what ``make review
BASE=HEAD~1`` runs (``python -m pipeline.review.repro``, then
``python -m pipeline report --base HEAD~1 --rebuild-base``): one with the
folder as its default remote, one with no remote (``core.remote`` unset).
Prints the wall-clock of each and writes ``reports/benchmarks/review_remote.json``.
Usage: ``python -m benchmarks.review_remote [--variants lenet5,mlp_tabular]``
(default: every variant, as ``make run``; the set-up run is not timed).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import REPO, quiet_env, write_figures

GIT_ENV = {f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER") for what, value in (("NAME", "b"), ("EMAIL", "b@x.org"))}


def run(cwd: Path, *cmd: str) -> str:
    """Run ``cmd`` in ``cwd`` (MLflow in the clone's own store); stop with its output when it fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")} | GIT_ENV | {"DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed in {cwd}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def edit_params(root: Path, variants: list[str] | None, rate: float | None) -> None:
    raw = yaml.safe_load((root / "params.yaml").read_text())
    if variants:
        raw["variants"] = {k: raw["variants"][k] for k in variants}
    if rate is not None:
        raw["variants"]["lenet5"].setdefault("train", {})["learning_rate"] = rate
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def origin(tmp: Path, store: Path, variants: list[str] | None) -> Path:
    """The base (outputs pushed to ``store``, dvc.lock committed), then the one-variant change (params only)."""
    root = tmp / "origin"
    run(REPO, "git", "clone", "-q", str(REPO), str(root))
    listed = run(REPO, "git", "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for name in filter(None, listed):  # the working tree, not only its last commit
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    edit_params(root, variants, None)
    run(root, "dvc", "remote", "add", "--local", "-d", "bench", str(store))
    run(root, "dvc", "repro")
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-q", "-m", "base")
    run(root, "dvc", "push", "--run-cache")
    edit_params(root, None, 0.003)
    run(root, "git", "commit", "-q", "-am", "lenet5 lr 0.003")
    return root


def review(src: Path, dst: Path, remote: Path | None) -> tuple[float, int, int]:
    """(seconds, stages run for the head, stages run for the base) of a review on a fresh clone of ``src``."""
    run(src.parent, "git", "clone", "-q", str(src), str(dst))
    if remote is None:
        run(dst, "dvc", "config", "--local", "core.remote", "")  # no default remote: today's rebuild
    else:
        run(dst, "dvc", "remote", "add", "--local", "-d", "bench", str(remote))
    start = time.perf_counter()
    head = run(dst, sys.executable, "-m", "pipeline.review.repro")
    base = run(dst, sys.executable, "-m", "pipeline", "report", "--base", "HEAD~1", "--rebuild-base", "--output", "review.md")
    seconds = time.perf_counter() - start
    ran = re.search(r"stages run: (\d+)", base)
    return seconds, head.count("Running stage"), int(ran.group(1)) if ran else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", help="comma-separated variants to keep (default: all)")
    args = parser.parse_args()
    quiet_env()
    variants = args.variants.split(",") if args.variants else None
    with tempfile.TemporaryDirectory(prefix="bench-review-") as tmp:
        store = Path(tmp) / "remote"
        store.mkdir()
        src = origin(Path(tmp), store, variants)
        with_remote, head_runs, base_runs = review(src, Path(tmp) / "with-remote", store)
        print(f"with the remote: {with_remote:.1f} s (stages run: head {head_runs}, base {base_runs})", flush=True)
        without, head_plain, base_plain = review(src, Path(tmp) / "rebuild", None)
        print(f"--rebuild-base alone: {without:.1f} s (stages run: head {head_plain}, base {base_plain})", flush=True)
    write_figures(
        "review_remote",
        {"review_with_remote_s": round(with_remote, 1), "review_rebuild_base_s": round(without, 1)},
        {
            "remote": "a local folder (dvc remote add --local -d), standing for the team stack's S3 bucket",
            "variants": variants or "all",
            "stages_run_with_remote": {"head": head_runs, "base": base_runs},
            "stages_run_rebuild_base": {"head": head_plain, "base": base_plain},
        },
    )


if __name__ == "__main__":
    main()
