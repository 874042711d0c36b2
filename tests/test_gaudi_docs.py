"""docs/gaudi.md's "Emulating Gaudi numerics on a CPU" example runs and computes what it says.

The expected scales are derived here from the rules, not copied from the example's output:
Gaudi2's scale is the largest of {1/16, 1, 16, 256} not above 240 / amax; Gaudi3's the
largest power of two not above 448 / amax.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

import portable_fp8 as fp8

DOC = Path(__file__).resolve().parent.parent / "docs" / "gaudi.md"


def _run_example(capsys) -> tuple[dict, str]:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1, "docs/gaudi.md should hold exactly one runnable example"
    namespace: dict = {}
    exec(compile(blocks[0], str(DOC), "exec"), namespace)
    return namespace, capsys.readouterr().out


def test_gaudi_emulation_example(capsys):
    ns, out = _run_example(capsys)
    x, w = ns["x"], ns["w"]
    amax_x, amax_w = x.abs().max().item(), w.abs().max().item()

    def gaudi2_scale(amax: float) -> float:
        return max(c for c in (2.0**-4, 1.0, 16.0, 256.0) if c <= 240.0 / amax)

    def gaudi3_scale(amax: float) -> float:
        return 2.0 ** math.floor(math.log2(448.0 / amax))

    assert f"Gaudi2 scales {gaudi2_scale(amax_x)} {gaudi2_scale(amax_w)}" in out
    assert f"Gaudi3 scales {gaudi3_scale(amax_x)} {gaudi3_scale(amax_w)}" in out
    assert "tensor([ 240., -240.])" in out  # Gaudi2 E4M3 saturates at 240
    for key in ("y_gaudi2", "y_gaudi3"):
        assert ns[key].shape == (64, 128) and ns[key].dtype == torch.bfloat16
    # The example's Gaudi2 GEMM is the reference GEMM of e4m3_gaudi2 operands (|code| <= 240).
    sx = torch.tensor(gaudi2_scale(amax_x))
    xq = fp8.quantize(x, "e4m3_gaudi2", scale=sx, backend="reference")
    values = fp8.dequantize(xq, backend="reference") * sx
    assert values.abs().max().item() <= 240.0
    assert "relative error vs fp32" in out
