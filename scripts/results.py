"""``make results``: every variant on the real datasets at the seed's protocols, through the real pipeline.

Reads ``results.yaml`` (the protocol: the mirror folder, the loopback port,
the houses split seeds and a ``params`` overlay merged over ``params.yaml``),
serves the mirror on 127.0.0.1 and runs ``dvc repro`` in a separate DVC
project, ``results/workspace`` (git-ignored), that shares this project's
DVC cache, so nothing of the demo workspace is touched and a stage that ran
before with the same inputs is restored instead of rerun.

* Houses: the extra split seeds first (params restricted to the houses
  variants, ``prepare.houses.seed`` = the seed), then the seed split.
* Pets and the seed split: one ``dvc repro`` with every selected variant.

Writes ``reports/results.json`` (entries of variants not run this time are
kept), ``reports/results.md`` and the table between the ``results`` markers
of ``docs/results.md``. Usage: ``python -m scripts.results [--variants a,b]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from benchmarks import data_stages  # the loopback server and the machine description the benchmarks use

REPO = Path(__file__).resolve().parents[1]


WORKSPACE = REPO / "results" / "workspace"
RESULTS_JSON = REPO / "reports" / "results.json"
RESULTS_MD = REPO / "reports" / "results.md"
RESULTS_DOC = REPO / "docs" / "results.md"
MARKERS = ("<!-- results:start -->", "<!-- results:end -->")
PLAN_KEYS = ("mirror", "port", "houses_split_seeds", "params")
# dvc repro's console: a stage starts at "Running stage 'x':" and has run once DVC updates the lock file
STAGE_START = re.compile(r"^Running stage '([^']+)':")
STAGE_END = "Updating lock file"

log = logging.getLogger("results")


class ResultsError(Exception):
    """A bad plan or a failed run: the message names the file or key."""


@dataclass(frozen=True)
class Plan:
    mirror: Path
    port: int
    split_seeds: tuple[int, ...]  # the first is the seed split
    overlay: dict[str, Any]


def load_plan(path: Path) -> Plan:
    """Parse and check ``results.yaml``; a relative mirror is relative to the file."""
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, Mapping) or set(raw) != set(PLAN_KEYS):
        got = sorted(raw) if isinstance(raw, Mapping) else raw
        raise ResultsError(f"{path}: expected exactly the keys {', '.join(PLAN_KEYS)}, got {got}")
    seeds = raw["houses_split_seeds"]
    if not (
        isinstance(seeds, list)
        and seeds
        and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        and len(set(seeds)) == len(seeds)
    ):
        raise ResultsError(f"{path}: houses_split_seeds: expected a non-empty list of distinct integers, got {seeds!r}")
    port = raw["port"]
    if isinstance(port, bool) or not isinstance(port, int) or not 1024 <= port <= 65535:
        raise ResultsError(f"{path}: port: expected an integer in [1024, 65535], got {port!r}")
    if not isinstance(raw["params"], Mapping):
        raise ResultsError(f"{path}: params: expected a mapping (merged over params.yaml), got {raw['params']!r}")
    return Plan((path.parent / raw["mirror"]).resolve(), port, tuple(seeds), dict(raw["params"]))


def merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``overlay`` deep-merged over ``base`` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        out[key] = (
            merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else copy.deepcopy(value)
        )
    return out


def run_params(params: Mapping[str, Any], mirror_url: str, seed: int, variants: list[str]) -> dict[str, Any]:
    """The workspace's ``params.yaml`` for one run: the mirror URL, the houses split's ``seed`` and only ``variants``.

    Only ``prepare.houses.seed`` varies: the pets split, and the pets_unlabeled backbone pretrained on
    the photos it leaves out (15 minutes on 2 cores), stay the protocol's in every run.
    """
    out = merge(params, {"data": {"mirror": mirror_url}, "prepare": {"houses": {"seed": seed}}})
    out["variants"] = {name: out["variants"][name] for name in variants}
    return out


def select(params: Mapping[str, Any], wanted: str | None) -> list[str]:
    """The variants to run: all of ``params['variants']``, or the comma-separated ``wanted`` (unknown names fail)."""
    every = list(params["variants"])
    if not wanted:
        return every
    names = [n.strip() for n in wanted.split(",") if n.strip()]
    unknown = [n for n in names if n not in every]
    if unknown:
        raise ResultsError(f"VARIANTS: unknown {', '.join(unknown)}; choices: {', '.join(every)}")
    return names


# --------------------------------------------------------------------------- the workspace


def serve(folder: Path, port: int) -> ThreadingHTTPServer:
    """``folder`` over HTTP on 127.0.0.1:``port`` (a fixed port keeps ``data.mirror``, a download param, stable)."""
    try:
        return data_stages.serve(folder, port)[0]
    except OSError as exc:
        raise ResultsError(
            f"results.yaml: port {port}: cannot serve the mirror on 127.0.0.1 ({exc.strerror}); pick a free port"
        ) from None


def prepare_workspace(root: Path) -> None:
    """Copy the code and ``dvc.yaml`` into ``root``; on first use make it a git + DVC project on this project's cache."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(root / "pipeline", ignore_errors=True)
    shutil.copytree(REPO / "pipeline", root / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    if not (root / ".dvc").exists():
        for cmd in (
            ["git", "init", "-q"],
            ["dvc", "init", "-q"],
            ["dvc", "config", "core.analytics", "false"],
            ["dvc", "config", "cache.dir", str(REPO / ".dvc" / "cache")],
        ):
            subprocess.run(cmd, cwd=root, check=True)


def stage_seconds(lines: Iterable[tuple[float, str]]) -> dict[str, float]:
    """Wall seconds of each stage that ran, from dvc repro's console lines and the time each arrived.

    A stage that DVC skipped or restored from its run cache is absent; one that failed counts up
    to the last line.
    """
    out: dict[str, float] = {}
    current, since, now = None, 0.0, 0.0
    for now, line in lines:
        if current and (line.startswith(STAGE_END) or STAGE_START.match(line)):
            out[current] = round(now - since, 1)
            current = None
        if started := STAGE_START.match(line):
            current, since = started.group(1), now
    if current:
        out[current] = round(now - since, 1)
    return out


def repro(root: Path, params: Mapping[str, Any], logfile: Path) -> tuple[float, dict[str, float]]:
    """Write ``params.yaml`` and run ``dvc repro`` in ``root``; return its seconds and each stage's (:func:`stage_seconds`).

    Output goes to the console and ``logfile``.
    """
    (root / "params.yaml").write_text(yaml.safe_dump(dict(params), sort_keys=False))
    logfile.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    start = time.perf_counter()
    timed = []
    with logfile.open("w") as out:
        proc = subprocess.Popen(["dvc", "repro"], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            out.write(line)
            if STAGE_START.match(line) or line.startswith(STAGE_END):
                timed.append((time.perf_counter(), line))
        timed.append((time.perf_counter(), ""))  # the end: a stage that failed counts up to here
        if proc.wait():
            raise ResultsError(f"dvc repro failed in {root} (exit {proc.returncode}); its output is in {logfile}")
    return time.perf_counter() - start, stage_seconds(timed)


# --------------------------------------------------------------------------- figures


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultsError(f"{path}: cannot read the run's output ({exc})") from None


def pets_figures(root: Path, name: str) -> dict[str, Any]:
    """Test accuracy, image-passes (epochs x train images, fine-tuning included) and training seconds."""
    metrics = _json(root / "reports" / "metrics" / f"{name}.json")
    summary = _json(root / "logs" / "train" / f"{name}.json")
    out = {
        "test_accuracy": metrics["accuracy"],
        "roc_auc": metrics.get("roc_auc"),
        "image_passes": summary["images_seen"],
        "epochs": summary["epochs"],
        "train_seconds": round(summary["train_seconds"], 1),
    }
    if "knn_accuracy" in metrics:
        out["knn_accuracy"] = metrics["knn_accuracy"]
    return out


def pretrain_figures(root: Path, source: str) -> dict[str, Any]:
    """A pretrain source's quality figures (summary.json) and its pretraining seconds."""
    summary = _json(root / "models" / "pretrain" / source / "summary.json")
    timings = _json(root / "logs" / "pretrain" / f"{source}.json")
    keep = ("task", "knn_accuracy", "linear_probe_accuracy", "val_accuracy", "chance_accuracy", "epochs", "parameters")
    return {**{k: summary[k] for k in keep if k in summary}, "pretrain_seconds": round(timings["seconds"], 1)}


def sources(params: Mapping[str, Any], names: list[str]) -> dict[str, str]:
    """The pretrain source of each of ``names`` that starts from a pretrained backbone (``transfer.backbone: pretrain``)."""
    out = {}
    for name in names:
        variant = params["variants"][name]
        transfer = {**params["transfer"], **variant.get("transfer", {})}
        # transfer_scratch takes only the backbone's architecture, not its weights
        if variant["model"] in ("transfer_features", "transfer_finetune") and transfer["backbone"] == "pretrain":
            out[name] = transfer["source"]
    return out


def houses_figures(root: Path, name: str) -> dict[str, Any]:
    """MAPE as the seed reports it: mean and std of the absolute percentage error on the test houses."""
    metrics = _json(root / "reports" / "metrics" / f"{name}.json")
    summary = _json(root / "logs" / "train" / f"{name}.json")
    return {
        "mape_mean": metrics["ape_mean"],
        "mape_std": metrics["ape_std"],
        "test_houses": metrics["examples"],
        "train_seconds": round(summary["train_seconds"], 1),
    }


def houses_entry(by_seed: Mapping[int, Mapping[str, Any]], seeds: tuple[int, ...]) -> dict[str, Any]:
    """One houses variant: the seed split, every split, and the mean MAPE over them."""
    splits = [{"seed": s, **by_seed[s]} for s in seeds]
    return {
        "seed_split": dict(by_seed[seeds[0]]),
        "splits": splits,
        "mape_mean_over_splits": sum(s["mape_mean"] for s in splits) / len(splits),
    }


def _score(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def table(results: Mapping[str, Any]) -> str:
    """The results tables of ``docs/results.md`` (markdown)."""
    lines = [
        "| pets variant | backbone | test accuracy | kNN on its features | image-passes | train s |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in sorted(results.get("pets", {}).items(), key=lambda kv: -kv[1]["test_accuracy"]):
        lines.append(
            f"| `{name}` | {r.get('source', '')} | {r['test_accuracy']:.3f} | {_score(r.get('knn_accuracy'))} |"
            f" {r['image_passes']:,} | {r['train_seconds']:.0f} |"
        )
    if results.get("pretrain"):
        lines += [
            "",
            "| pretrain source | task | kNN (val) | linear probe (val) | source-task val accuracy | epochs | pretrain s |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r in sorted(results["pretrain"].items()):
            lines.append(
                f"| `{name}` | {r['task']} | {_score(r.get('knn_accuracy'))} | {_score(r.get('linear_probe_accuracy'))} |"
                f" {_score(r.get('val_accuracy'))} | {r['epochs']} | {r['pretrain_seconds']:.0f} |"
            )
    lines += ["", "| houses variant | MAPE, seed split (mean ± std) | mean MAPE over splits | seeds |", "|---|---|---|---|"]
    for name, r in sorted(results.get("houses", {}).items(), key=lambda kv: kv[1]["mape_mean_over_splits"]):
        seed = r["seed_split"]
        lines.append(
            f"| `{name}` | {seed['mape_mean']:.1f} % ± {seed['mape_std']:.1f} | {r['mape_mean_over_splits']:.1f} % |"
            f" {', '.join(str(s['seed']) for s in r['splits'])} |"
        )
    last = (results.get("runs") or [{}])[-1]
    if last.get("stage_seconds"):
        lines += ["", stage_table(last)]
    return "\n".join(lines) + "\n"


def stage_table(run: Mapping[str, Any]) -> str:
    """Each stage's wall seconds in one ``make results`` run, summed over its ``dvc repro`` calls (markdown)."""
    runs: dict[str, list[float]] = {}
    for stages in run["stage_seconds"].values():
        for stage, seconds in stages.items():
            runs.setdefault(stage, []).append(seconds)
    lines = [
        f"| stage (`make results`, variants: {run['variants']}, {run['seconds'] / 60:.1f} min in all) | runs | seconds |",
        "|---|---|---|",
    ]
    lines += [f"| `{stage}` | {len(times)} | {sum(times):.0f} |" for stage, times in runs.items()]
    return "\n".join(lines)


def update_doc(doc: Path, text: str) -> None:
    """Replace what lies between the results markers of ``doc``."""
    content = doc.read_text()
    start, end = MARKERS
    if start not in content or end not in content:
        raise ResultsError(f"{doc}: the markers {start} and {end} are missing")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{start}\n{text}{end}{tail}")


# --------------------------------------------------------------------------- main


def run(plan: Plan, base: Mapping[str, Any], wanted: str | None, root: Path) -> dict[str, Any]:
    """Run the protocol in ``root`` and return ``{"pets": ..., "houses": ...}`` for the selected variants."""
    params = merge(base, plan.overlay)
    names = select(params, wanted)
    houses = [n for n in names if params["variants"][n]["dataset"] == "houses"]
    pets = [n for n in names if n not in houses]
    if not plan.mirror.is_dir():
        raise ResultsError(
            f"results.yaml: mirror {plan.mirror}: not a folder (the offline datasets, see ../shared/datasets/README.md)"
        )
    server = serve(plan.mirror, plan.port)
    url = f"http://127.0.0.1:{plan.port}"
    try:
        prepare_workspace(root)
        by_seed: dict[str, dict[int, dict[str, Any]]] = {n: {} for n in houses}
        repros: dict[str, tuple[float, dict[str, float]]] = {}
        # the extra houses splits first, so the workspace ends on the seed split
        for seed in plan.split_seeds[1:] if houses else ():
            log.info("houses split seed %d: %s", seed, ", ".join(houses))
            repros[f"houses_seed_{seed}"] = repro(
                root, run_params(params, url, seed, houses), REPO / "results" / "logs" / f"houses-seed-{seed}.log"
            )
            for n in houses:
                by_seed[n][seed] = houses_figures(root, n)
        seed = plan.split_seeds[0]
        repros["seed_protocol"] = repro(
            root, run_params(params, url, seed, names), REPO / "results" / "logs" / "seed-protocol.log"
        )
        for n in houses:
            by_seed[n][seed] = houses_figures(root, n)
    finally:
        server.shutdown()
    used = sources(params, pets)
    return {
        "pets": {n: {**pets_figures(root, n), **({"source": used[n]} if n in used else {})} for n in pets},
        "pretrain": {source: pretrain_figures(root, source) for source in sorted(set(used.values()))},
        "houses": {n: houses_entry(by_seed[n], plan.split_seeds) for n in houses},
        "seconds": {label: seconds for label, (seconds, _) in repros.items()},
        "stage_seconds": {label: stages for label, (_, stages) in repros.items()},
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(
        prog="python -m scripts.results", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--variants", default=os.environ.get("VARIANTS") or None, help="comma-separated subset (default: every variant)"
    )
    parser.add_argument("--plan", type=Path, default=REPO / "results.yaml")
    args = parser.parse_args(argv)
    try:
        plan = load_plan(args.plan)
        start = time.perf_counter()
        new = run(plan, yaml.safe_load((REPO / "params.yaml").read_text()), args.variants, WORKSPACE)
        total = time.perf_counter() - start
    except ResultsError as exc:
        log.error("%s", exc)
        return 1
    old = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}
    results = {
        "pets": {**old.get("pets", {}), **new["pets"]},
        "houses": {**old.get("houses", {}), **new["houses"]},
        "pretrain": {**old.get("pretrain", {}), **new["pretrain"]},
        "runs": [
            *old.get("runs", []),
            {
                "variants": args.variants or "all",
                "seconds": round(total, 1),
                "repro_seconds": {k: round(v, 1) for k, v in new["seconds"].items()},
                "stage_seconds": new["stage_seconds"],
                "machine": data_stages.machine(),
                "load_average_1_5_15min": [round(x, 2) for x in os.getloadavg()],
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        ],
    }
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(results, indent=2) + "\n")
    text = table(results)
    RESULTS_MD.write_text(text)
    update_doc(RESULTS_DOC, text)
    print(text)
    print(
        f"{len(new['pets']) + len(new['houses'])} variants in {total / 60:.1f} min;"
        f" {RESULTS_JSON.relative_to(REPO)} and {RESULTS_DOC.relative_to(REPO)} updated"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
