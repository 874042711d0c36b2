"""FP8 health telemetry (portable_fp8.nn.telemetry): the statistics against independent
formulas, zero cost when off, no change to training, thresholds, writers and the report."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import portable_fp8.nn as pn
from portable_fp8 import cli
from portable_fp8.errors import Fp8Error, Fp8ValueError
from portable_fp8.nn import telemetry, telemetry_report
from portable_fp8.nn.telemetry import Fp8TelemetryWarning, Thresholds

BACKENDS = ["reference", "cpu"]
ROLES = ("input", "weight", "grad_output")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matrices: one intra-op thread is as fast and immune to a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _mlp(recipe, backend, seed=0):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(
        torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
        torch.nn.Linear(64, 16),
    )  # fmt: skip
    return pn.convert(m, recipe=recipe, backend=backend)


def _batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(24, 32, generator=g), torch.randn(24, 16, generator=g)) for _ in range(n)]


def _train(model, steps, tel=None, perturb=None):
    """SGD on fixed batches; ``perturb(step, x)`` may change a step's input. Returns losses."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for i, (x, y) in enumerate(_batches(steps)):
        if perturb is not None:
            x = perturb(i, x)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if tel is not None:
            tel.step()
    return losses


def _warned(caught) -> set[tuple[str, str]]:
    """(layer, role) pairs named by the telemetry warnings in ``caught``."""
    out = set()
    for w in caught:
        if issubclass(w.category, Fp8TelemetryWarning):
            text = str(w.message)
            layer = text.split("layer '", 1)[1].split("'", 1)[0]
            role = text.split("role '", 1)[1].split("'", 1)[0]
            out.add((layer, role))
    return out


# --- the statistics -------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("backend", BACKENDS)
def test_statistics_match_independent_formulas(backend):
    """One sampled step, current tensorwise scaling: amax, scale, relative error, SQNR and
    kurtosis of layer 0's input and dy against torch's own float8 cast and float64 numpy."""
    model = _mlp(pn.CurrentScaling(), backend)
    seen = {}
    model[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("input", a[0].detach()))
    model[0].register_full_backward_hook(
        lambda m, gi, go: seen.__setitem__("grad_output", go[0].detach())
    )
    with telemetry.collect(model) as t:
        _train(model, 1, t)
    for role, fmt, dtype in (("input", 448.0, torch.float8_e4m3fn),
                             ("grad_output", 57344.0, torch.float8_e5m2)):  # fmt: skip
        x = seen[role]
        rec = t.last[("0", role)]
        amax = x.abs().max()
        assert rec.amax == amax.item()
        scale = torch.tensor(fmt) / amax  # one fp32 division, as the contract's scale
        assert rec.scale_min == rec.scale_max == scale.item()
        deq = (x * scale).to(dtype).float() / scale  # torch's cast: RNE, in range here
        xd, dd = x.double().numpy(), deq.double().numpy()
        rel = np.linalg.norm(dd - xd) / np.linalg.norm(xd)
        # fp32 sums of squares of ~1e3 terms: relative rounding well under 1e-5.
        assert rec.rel_error == pytest.approx(rel, rel=1e-5)
        assert rec.sqnr_db == pytest.approx(-20 * math.log10(rel), rel=1e-5)
        z = (xd - xd.mean()) / xd.std()
        assert rec.kurtosis == pytest.approx(float(np.mean(z**4)), rel=1e-4)  # fp32 moments
        assert rec.saturated == rec.nan == rec.inf == 0
        assert rec.numel == x.numel() and rec.granularity == "tensorwise"


@pytest.mark.filterwarnings("ignore::portable_fp8.nn.telemetry.Fp8TelemetryWarning")
@pytest.mark.parametrize("backend", BACKENDS)
def test_saturated_flushed_and_subnormal_fractions_are_counted_exactly(backend):
    """Static scale 1 on E4M3FN (max 448, half a step above it 464; smallest subnormal 2^-9,
    smallest normal 2^-6): 1000 saturates, 450 only rounds to 448, 1e-4 flushes to 0
    (below 2^-10), 3e-3 is subnormal, 0 is excluded from the nonzero fractions."""
    layer = pn.Linear(8, 4, recipe=pn.StaticScaling(), backend=backend)
    x = torch.tensor([[1000.0, 450.0, 1e-4, 3e-3, 1.0, -2.0, 0.0, 0.5]])
    with telemetry.collect(layer) as t:
        layer(x)
        t.step()
    rec = t.last[("", "input")]
    assert rec.saturated == 1 / 8
    assert rec.underflow == 1 / 7  # of the 7 nonzero elements
    assert rec.subnormal == 1 / 7
    assert rec.amax == 1000.0 and rec.scale_min == 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_delayed_scaling_reports_its_amax_history(backend):
    model = _mlp(pn.DelayedScaling(history_len=4), backend)
    with telemetry.collect(model) as t:
        _train(model, 3, t)
    for role in ROLES:
        rec = t.last[("2", role)]
        assert len(rec.amax_history) == 4
        assert rec.amax_history[0] == rec.amax  # newest first, after this step's update
        assert rec.amax_history[3] == 0.0  # three steps recorded so far
        # The scale used came from the history before this step (not from this amax).
        row = model[2].amax_history[("input", "weight", "grad_output").index(role)]
        assert row.tolist() == rec.amax_history
    assert t.last[("0", "input")].what_if is None  # not asked for


@pytest.mark.parametrize("backend", BACKENDS)
def test_what_if_errors_come_from_the_same_tensors(backend):
    """With current scaling, the what-if entry of the recipe's own format and granularity is
    the actual cast, so the two relative errors agree exactly; every entry is declared by
    reference and cpu (MX included) and is finite."""
    for recipe, gran in ((pn.CurrentScaling(), "tensorwise"),
                         (pn.CurrentScaling(granularity="rowwise"), "rowwise")):  # fmt: skip
        model = _mlp(recipe, backend)
        with telemetry.collect(model, what_if=True) as t:
            _train(model, 1, t)
        for (layer, role), rec in t.last.items():
            assert set(rec.what_if) == {f"{f}/{g}" for f, g in telemetry.DEFAULT_WHAT_IF}
            assert all(v is not None and math.isfinite(v) for v in rec.what_if.values())
            # (W's rowwise cast is per output channel, a row of W: the same blocks.)
            assert rec.what_if[f"{rec.format}/{gran}"] == rec.rel_error, (layer, role)
            # E5M2 keeps 2 mantissa bits, E4M3 3: about twice the error on the same tensor.
            assert rec.what_if["e5m2/tensorwise"] > rec.what_if["e4m3fn/tensorwise"]


# --- sampling, zero cost when off, no effect on training -----------------------------------


def test_every_n_samples_steps_0_n_2n():
    model = _mlp(pn.CurrentScaling(), "cpu")
    with telemetry.collect(model, every=3) as t:
        _train(model, 7, t)
    steps = sorted({r.step for r in t.history})
    assert steps == [0, 3, 6]
    assert len(t.history) == 3 * 3 * 3  # steps x layers x roles
    assert {(r.layer, r.role) for r in t.history if r.step == 6} == set(t.last)
    assert all(layer._fp8_probe is None for layer in t.layers.values())  # closed: detached
    with telemetry.collect(model, every=3, keep_history=False) as t2:
        _train(model, 4, t2)
    assert t2.history == [] and {r.step for r in t2.last.values()} == {3}


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def _ops_of_one_step(model, x):
    with _CountOps() as c:
        model(x).sum().backward()
    return c.count


def test_off_costs_no_op():
    """Telemetry attached but not sampling this step runs exactly the ops of no telemetry."""
    model = _mlp(pn.DelayedScaling(), "cpu")
    x = torch.randn(24, 32)
    assert all(m._fp8_probe is None for m in model.modules() if isinstance(m, pn.Linear))
    plain = _ops_of_one_step(model, x)
    t = telemetry.enable(model, every=2)
    sampled = _ops_of_one_step(model, x)
    t.step()  # step 1: not sampled
    unsampled = _ops_of_one_step(model, x)
    t.close()
    assert unsampled == plain
    assert sampled > plain  # the sampled step did measure


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "recipe",
    [pn.CurrentScaling(), pn.DelayedScaling(), pn.CurrentScaling(granularity="rowwise"),
     pn.Blockwise()],
    ids=["current", "delayed", "rowwise", "blockwise"],
)  # fmt: skip
def test_training_is_bit_identical_with_telemetry_on(backend, recipe):
    base = _mlp(recipe, backend)
    base_losses = _train(base, 4)
    ours = _mlp(recipe, backend)
    with telemetry.collect(ours, every=1, what_if=True) as t:
        ours_losses = _train(ours, 4, t)
    assert len(t.history) == 4 * 3 * 3
    assert ours_losses == base_losses
    for (name, a), b in zip(base.state_dict().items(), ours.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_close_finishes_an_open_step_and_eval_reports_forward_roles_only():
    """Inference (no backward, no t.step()): closing the collector finishes the step, with
    the input and weight of each layer; the hooks are detached afterwards."""
    model = _mlp(pn.CurrentScaling(), "cpu").eval()
    with torch.no_grad(), telemetry.collect(model) as t:
        model(torch.randn(8, 32))
    assert {r.role for r in t.history} == {"input", "weight"}
    assert len(t.history) == 3 * 2 and all(r.step == 0 for r in t.history)
    assert all(m._fp8_probe is None for m in model.modules() if isinstance(m, pn.Linear))


def test_every_must_be_a_positive_int():
    model = _mlp(pn.CurrentScaling(), "cpu")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(Fp8ValueError):
            telemetry.enable(model, every=bad)


# --- thresholds -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("recipe", [pn.CurrentScaling(), pn.DelayedScaling()],
                         ids=["current", "delayed"])  # fmt: skip
def test_a_healthy_run_warns_nothing(backend, recipe):
    model = _mlp(recipe, backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Fp8TelemetryWarning)
        with telemetry.collect(model, every=1) as t:
            _train(model, 8, t)
    assert not any(r.alerts for r in t.history)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_nan_is_reported_at_the_layer_and_role_it_enters(backend):
    """A NaN put into the input of layer '2' at step 3 (the last): the warning names layer
    '2', role 'input'; layer 0's input and weight (upstream in the forward pass) stay quiet.
    (Its dy is NaN too: the backward pass carries the NaN there.)"""
    model = _mlp(pn.CurrentScaling(), backend)

    def inject(module, args):
        if t.step_index == 3:
            x = args[0].clone()
            x[0, 0] = math.nan
            return (x,)
        return None

    model[2].register_forward_pre_hook(inject)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with telemetry.collect(model) as t:
            _train(model, 4, t)
    warned = _warned(caught)
    assert ("2", "input") in warned and ("0", "grad_output") in warned
    assert ("0", "input") not in warned and ("0", "weight") not in warned
    rec = next(r for r in t.history if (r.step, r.layer, r.role) == (3, "2", "input"))
    assert rec.nan == 1 and "nonfinite" in rec.alerts
    assert all(not r.alerts for r in t.history if r.step < 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_range_jump_under_delayed_scaling_warns_saturation(backend):
    """Inputs 1000x larger at step 4: the stored scale (from the history) saturates layer
    0's input; the warning names it, and no weight saturates."""
    model = _mlp(pn.DelayedScaling(), backend)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with telemetry.collect(model) as t:
            _train(model, 5, t, perturb=lambda i, x: x * 1000 if i == 4 else x)
    assert ("0", "input") in _warned(caught)
    rec = t.last[("0", "input")]
    assert "saturated" in rec.alerts and rec.saturated > 0.5
    assert not any(r.alerts for r in t.history if r.role == "weight")
    assert not any(r.alerts for r in t.history if r.step < 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_outlier_under_current_scaling_warns_underflow_and_kurtosis(backend):
    """One input element of 1e6 at step 2: the tensorwise scale follows it, so the other
    (unit-sized) inputs scale to ~4.5e-4, under half E4M3's smallest subnormal: they flush
    to zero; and the kurtosis jumps to about numel."""
    model = _mlp(pn.CurrentScaling(), backend)

    def outlier(i, x):
        if i == 2:
            x = x.clone()
            x[0, 0] = 1e6
        return x

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with telemetry.collect(model) as t:
            _train(model, 3, t, perturb=outlier)
    assert ("0", "input") in _warned(caught)
    rec = t.last[("0", "input")]
    assert {"underflow", "kurtosis"} <= set(rec.alerts)
    assert rec.underflow > 0.9
    messages = [str(w.message) for w in caught if "layer '0' role 'input'" in str(w.message)]
    assert any("flushed to zero" in m for m in messages)
    assert any("kurtosis" in m for m in messages)


def test_thresholds_can_be_turned_off():
    model = _mlp(pn.DelayedScaling(), "cpu")
    quiet = Thresholds(saturated=None, underflow=None, kurtosis_growth=None, nonfinite=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Fp8TelemetryWarning)
        with telemetry.collect(model, thresholds=quiet) as t:
            _train(model, 5, t, perturb=lambda i, x: x * 1000 if i == 4 else x)
    assert t.last[("0", "input")].saturated > 0.5


# --- writers and the report -----------------------------------------------------------------


def _run_with_nan(tmp_path):
    path = tmp_path / "run.jsonl"
    model = _mlp(pn.CurrentScaling(), "cpu")

    def inject(module, args):
        if t.step_index == 3:
            x = args[0].clone()
            x[0, 0] = math.nan
            return (x,)
        return None

    model[2].register_forward_pre_hook(inject)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Fp8TelemetryWarning)
        with telemetry.collect(model, what_if=True, writers=[telemetry.JsonlWriter(path)]) as t:
            _train(model, 4, t)  # the NaN at the last step: the weights stay finite
    return path, t


def test_jsonl_has_one_strict_json_record_per_step_layer_role(tmp_path):
    path, t = _run_with_nan(tmp_path)
    lines = path.read_text().splitlines()
    assert len(lines) == 4 * 3 * 3
    for line in lines:
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    back = telemetry.read_jsonl(path)
    assert [r.to_json() for r in back] == [r.to_json() for r in t.history]
    # The NaN input: amax is NaN (spelled "nan" in the file); the cast statistics are of
    # the finite elements, so they stay finite.
    nan_rec = next(r for r in back if (r.step, r.layer, r.role) == (3, "2", "input"))
    assert nan_rec.nan == 1 and math.isnan(nan_rec.amax)
    assert math.isfinite(nan_rec.rel_error) and math.isfinite(nan_rec.kurtosis)
    assert json.loads(lines[back.index(nan_rec)])["amax"] == "nan"


def test_tensorboard_writer_tags_and_steps():
    calls = []

    class Fake:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            calls.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            calls.append("closed")

    model = _mlp(pn.CurrentScaling(), "cpu")
    w = telemetry.TensorBoardWriter("unused", summary_writer_factory=Fake)
    with telemetry.collect(model, every=2, what_if=[("e5m2", "rowwise")], writers=[w]) as t:
        _train(model, 3, t)
    tags = {c[0] for c in calls if c != "closed"}
    assert "fp8/0/input/saturated" in tags and "fp8/4/grad_output/kurtosis" in tags
    assert "fp8/2/weight/what_if/e5m2_rowwise" in tags
    assert {c[2] for c in calls if c != "closed"} == {0, 2}
    assert calls[-1] == "closed"
    rec = t.last[("0", "input")]
    assert ("fp8/0/input/amax", rec.amax, 2) in calls


def test_tensorboard_writer_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    model = _mlp(pn.CurrentScaling(), "cpu")
    with telemetry.collect(model, writers=[telemetry.TensorBoardWriter(tmp_path)]) as t:
        _train(model, 2, t)
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())


def test_tensorboard_writer_without_tensorboard_raises_fp8error(monkeypatch):
    monkeypatch.setattr(telemetry, "tensorboard_available", lambda: False)
    with pytest.raises(Fp8Error, match="tensorboard"):
        telemetry.TensorBoardWriter("unused")


def test_cli_report_lists_the_flagged_layer_first(tmp_path, capsys):
    path, _ = _run_with_nan(tmp_path)
    out = tmp_path / "out.html"
    assert cli.main(["telemetry", str(path), "--report", str(out)]) == 0
    page = out.read_text()
    # The NaN entered at layer 2's input, reached layer 4's input, then every dy (4, 2, 0):
    # the report lists the layers in the order of their first crossing.
    assert "layers that crossed a threshold: 2, 4, 0" in capsys.readouterr().out
    heads = [page.index(f"<h2>layer {n} (threshold crossed)") for n in ("2", "4", "0")]
    assert heads == sorted(heads)
    assert "nonfinite" in page and "e4m3fn/mx_1x32" in page
    if telemetry_report.matplotlib_available():
        assert page.count("<img") == 3  # one figure per layer
    else:
        assert "Plots need matplotlib" in page


def test_report_without_matplotlib_has_tables_and_says_so(tmp_path, monkeypatch):
    path, _ = _run_with_nan(tmp_path)
    monkeypatch.setattr(telemetry_report, "matplotlib_available", lambda: False)
    out = telemetry_report.write_report(telemetry.read_jsonl(path), tmp_path / "t.html")
    page = out.read_text()
    assert "Plots need matplotlib" in page and "<img" not in page
    assert page.count("<table>") >= 3


def test_the_docs_example_runs_and_its_file_draws(tmp_path, monkeypatch, capsys):
    """docs/telemetry.md's Python example, as written, then the command it shows."""
    import re
    from pathlib import Path

    doc = Path(__file__).resolve().parents[1] / "docs" / "telemetry.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], f"{doc}:example", "exec"), {})
    out = capsys.readouterr().out
    assert out.startswith("20 e5m2 ") and "E4M3 rowwise would have given" in out
    assert len(telemetry.read_jsonl("run.jsonl")) == 3 * 2 * 3  # steps 0, 10, 20
    assert cli.main(["telemetry", "run.jsonl", "--report", "run.html"]) == 0
    assert (tmp_path / "run.html").exists()


def _fp8_formats():
    """The byte-wide element formats the emulator casts to (every one has NaN or inf)."""
    from portable_fp8.numerics.formats import element_formats

    return [f for f in element_formats() if f.packing == "byte" and f.has_nan]


@pytest.mark.parametrize("fmt", _fp8_formats(), ids=lambda f: f.name)
def test_saturation_count_agrees_with_the_emulator_cast_at_the_overflow_boundary(fmt):
    """At ``max``, one fp32 ulp below the boundary, exactly at it and one ulp above, a
    value counts as saturated exactly when the emulator's non-saturating cast overflows
    it (its code is inf or NaN rather than ``max``): the tie at the boundary included."""
    from portable_fp8.numerics.cast import round_to_codes

    bound = torch.tensor(fmt.overflow_boundary, dtype=torch.float32)
    assert float(bound) == fmt.overflow_boundary  # the boundary is an fp32 number
    inf = torch.tensor(math.inf)
    y = torch.stack([
        torch.tensor(fmt.max), torch.nextafter(bound, -inf), bound, torch.nextafter(bound, inf)
    ]).float()  # fmt: skip
    y = torch.cat([y, -y])
    codes = round_to_codes(y, fmt, saturate=False).long()
    values = fmt.code_values[codes]
    overflowed = values.isnan() | values.isinf()
    assert (overflowed | (values.abs() == fmt.max)).all()  # nothing else is reached
    assert torch.equal(telemetry._saturated(y, fmt), overflowed)
