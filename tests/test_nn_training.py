"""CI proof that FP8 training works: the tiny char-LM on the `cpu` backend vs float32."""

from __future__ import annotations

import importlib.util
import math
import pathlib
import sys

import pytest
import torch

import portable_fp8.nn as pn

_EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "train_charlm.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("train_charlm", _EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread():
    """The model's matrices are tiny: one intra-op thread is as fast, and immune to the
    slow-down that spinning OpenMP threads suffer on a shared, loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tiny_charlm_fp8_matches_float32(one_thread):
    """300 steps, same seed and batches: FP8 (tensorwise, hybrid E4M3/E5M2) final held-out
    loss within 3% of the float32 run's (both runs: about 20 s on one CPU core)."""
    ex = _load_example()
    cfg = ex.PRESETS["tiny"]
    base = ex.train(cfg, device="cpu", dtype="fp32")
    ours = ex.train(cfg, fp8_recipe=pn.CurrentScaling(), backend="cpu", device="cpu")
    assert len(ours["converted"]) == 4 * cfg.n_layer and not ours["skipped"]
    # It learned something (a uniform byte model has loss ln 256 = 5.55) ...
    assert base["eval"] < 0.5 * math.log(256)
    # ... and FP8 matches float32 to within 3%.
    assert abs(ours["eval"] / base["eval"] - 1) < 0.03, (ours["eval"], base["eval"])
    assert all(math.isfinite(v) for v in ours["losses"])
