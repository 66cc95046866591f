"""dvc.yaml declares, for every stage, the pipeline code it runs: edit a module and DVC reruns what imports it.

A stage's code is its module ``pipeline/stages/<stage>.py`` and every
``pipeline`` module it imports, at the top or inside a function, transitively.
Each must lie under one of the stage's ``deps``, or be shared plumbing listed
in :data:`PLUMBING` with the reason it is left out. Read from the source with
``ast``: nothing is imported, so this runs in a second.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# Shared plumbing no stage declares: a change to it must not rerun the whole pipeline, and none changes
# what a stage computes from its declared inputs. Imports are not followed through these modules.
PLUMBING = {
    "pipeline/__init__.py": "the package marker",
    "pipeline/config.py": "parses params.yaml; DVC tracks the params values each stage reads",
    "pipeline/schema.py": "the field types of config's and the knobs' schemas (defaults live in the declared modules)",
    "pipeline/paths.py": "output locations; dvc.yaml names the same paths",
    "pipeline/files.py": "atomic writes",
    "pipeline/errors.py": "the error type",
    "pipeline/cli.py": "argument parsing of the per-dataset stages",
    "pipeline/tracking.py": "MLflow logging: what it writes lives outside DVC's outputs",
    "pipeline/runs.py": "the MLflow run's lifecycle (resume, KILLED, FAILED): what it writes lives outside DVC's outputs",
    "pipeline/review/__init__.py": "the report CLI's --base mode (a review for a pull request); dvc repro never runs it",
}


def module_file(name: str) -> Path | None:
    """``pipeline.data.shards`` -> its file (a module or a package's __init__.py), None outside the package."""
    base = REPO / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported(path: Path) -> set[str]:
    """The ``pipeline`` modules one file imports (``from pipeline.x import y`` counts ``pipeline.x.y`` when a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n.split(".")[0] == "pipeline" and module_file(n)}


def docstring_only(path: Path) -> bool:
    """A package's ``__init__.py`` that holds nothing but its docstring (it cannot change what a stage computes)."""
    body = ast.parse(path.read_text()).body
    return path.name == "__init__.py" and all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def stage_code(stage: str) -> set[str]:
    """Repository-relative files of the stage module and everything it imports, transitively, plumbing excluded."""
    todo, seen = [REPO / "pipeline" / "stages" / f"{stage}.py"], set()
    while todo:
        path = todo.pop()
        rel = path.relative_to(REPO).as_posix()
        if rel in seen or rel in PLUMBING or docstring_only(path):
            continue
        seen.add(rel)
        for name in imported(path):
            parts = name.split(".")
            # importing pipeline.a.b runs pipeline/a/__init__.py too
            todo.extend(f for i in range(2, len(parts) + 1) if (f := module_file(".".join(parts[:i]))))
    return seen


def stages() -> dict[str, list[str]]:
    """Stage name -> its deps, from dvc.yaml (one entry per foreach stage: its items share their code deps)."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in spec.items():
        body = stage.get("do", stage)
        assert body["cmd"].split()[:4] == ["python", "-m", "pipeline", name], f"{name}: runs {body['cmd']!r}"
        out[name] = [d for d in body.get("deps", []) if str(d).startswith("pipeline")]
    return out


@pytest.mark.parametrize("stage", list(stages()))
def test_a_stage_declares_the_code_it_imports(stage: str) -> None:
    deps = stages()[stage]
    for dep in deps:
        assert (REPO / dep).exists(), f"dvc.yaml: stage {stage} declares {dep}, which does not exist"
    undeclared = sorted(f for f in stage_code(stage) if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps))
    assert not undeclared, f"dvc.yaml: stage {stage} imports {undeclared} but does not declare them (or list them in PLUMBING)"


def test_no_stage_imports_another_stage() -> None:
    for stage in stages():
        others = {
            f for f in stage_code(stage) if f.startswith("pipeline/stages/") and not f.endswith(("/__init__.py", f"/{stage}.py"))
        }
        assert not others, (
            f"pipeline/stages/{stage}.py imports {sorted(others)}: shared code belongs in data/, models/ or training/"
        )
