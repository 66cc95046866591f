"""Tests for the benchmark scripts' bookkeeping (FLOP counting, targets, the summary table): nothing is timed."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import run_all

REPO = Path(__file__).resolve().parents[1]


def test_flops_of_the_seed_cnn_at_150_px_match_a_hand_count() -> None:
    pytest.importorskip("tensorflow")
    from benchmarks import mfu
    from pipeline.models import registry

    macs = dict(mfu.layer_macs(registry.build("cnn_functional", registry.ModelSpec(image_size=150))))
    # same padding: 150 -> 75 -> 37 -> 18 -> 9 after each pooling
    expected = {
        "conv1": 150 * 150 * 32 * 3 * 9,
        "conv2": 75 * 75 * 64 * 32 * 9,
        "conv3": 37 * 37 * 128 * 64 * 9,
        "conv4": 18 * 18 * 128 * 128 * 9,
        "fc": 9 * 9 * 128 * 512,
        "prediction": 512,
    }
    assert macs == expected
    forward, step = mfu.train_flops(list(macs.items()))
    total = sum(expected.values())
    assert forward == 2 * total
    assert step == 6 * total - 2 * expected["conv1"]  # the image needs no gradient


def test_fused_adam_follows_keras_adam() -> None:
    pytest.importorskip("tensorflow")
    import keras
    import numpy as np

    from benchmarks import mfu

    rng = np.random.default_rng(0)
    init = [rng.normal(size=shape).astype("float32") for shape in [(64, 8), (8,)]]
    grads = [[rng.normal(size=w.shape).astype("float32") for w in init] for _ in range(5)]

    def trained(optimizer: keras.optimizers.Optimizer) -> list[np.ndarray]:
        variables = [keras.Variable(w) for w in init]
        for g in grads:
            optimizer.apply_gradients(zip(g, variables))
        return [v.numpy() for v in variables]

    reference = trained(keras.optimizers.Adam(0.01))
    fused = mfu.fused_adam(keras.optimizers.Adam(0.01))
    assert type(fused).__name__ == "FusedAdam"
    for got, want, start in zip(trained(fused), reference, init):
        assert np.abs(want - start).mean() > 1e-2  # the steps moved the weights far beyond the tolerance
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    with pytest.raises(TypeError, match="SGD"):
        mfu.fused_adam(keras.optimizers.SGD())


def test_targets_and_table_handle_met_missed_and_missing_figures() -> None:
    figures = {"input_pipeline_speedup_vs_imagedatagenerator": 5.0, "train_throughput_ratio_vs_bare_fit": 0.9, "mfu": None}
    goals = run_all.targets(figures)
    assert [goals[k]["met"] for k in figures] == [True, False, None]
    machine = {"cores": 2, "cpu": "Some CPU"}
    details = {k: {"status": "ok", "machine": machine} for k in figures}
    details["mfu"] = {"status": "failed"}
    lines = run_all.table(figures, goals, details).splitlines()
    assert lines[0].split()[:3] == ["figure", "value", "target"]
    assert "yes" in lines[1] and "2 cores, Some CPU" in lines[1]
    assert " NO " in lines[2]
    assert lines[3].split()[:4] == ["mfu", "-", ">=", "0.65"] and "failed" in lines[3]


def test_every_script_named_by_run_all_exists() -> None:
    for name in run_all.SCRIPTS:
        assert (REPO / "benchmarks" / f"{name}.py").is_file()
    assert set(run_all.TARGETS) <= {figure for keys in run_all.SCRIPTS.values() for figure in keys}


def test_dvc_reads_yaml_with_the_c_parser() -> None:
    """requirements.txt installs ruamel.yaml.clib: without it every no-op ``dvc repro`` parses params.yaml
    (once per stage) and dvc.lock in pure Python, about a third of its time on the real profile."""
    from ruamel.yaml import YAML
    from ruamel.yaml.main import CParser

    assert CParser is not None, "ruamel.yaml's C parser (ruamel.yaml.clib) is not installed"
    assert YAML(typ="safe").Parser is CParser
