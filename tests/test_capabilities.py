"""The capability question: each ``Capabilities.why_not_*`` names the first missing feature.

Every reason is the text NotSupportedError puts after "does not support", so each test
checks the exact reason for one declared set that lacks exactly one feature, and None for
the declared case. Arguments may be names or Format / Granularity objects.
"""

from __future__ import annotations

import pytest
import torch

from portable_fp8.dispatch.backend import Capabilities as ReExported
from portable_fp8.dispatch.capabilities import Capabilities
from portable_fp8.numerics.formats import get_format
from portable_fp8.numerics.granularity import get_granularity

F32, BF16 = torch.float32, torch.bfloat16

CAPS = Capabilities(
    devices=frozenset({"cpu"}),
    cast_formats=frozenset({"e4m3fn", "e5m2"}),
    gemm_formats=frozenset({("e4m3fn", "e4m3fn")}),
    granularities=frozenset({"tensorwise", "rowwise", "columnwise"}),
    gemm_granularities=frozenset({("tensorwise", "tensorwise"), ("rowwise", "columnwise")}),
    rounding=frozenset({"nearest"}),
    non_saturating=False,
    out_dtypes=frozenset({BF16}),
    gemm_bias=False,
    gemm_accumulate=False,
    gemm_dim_multiple=16,
)


def test_backend_module_re_exports():
    assert ReExported is Capabilities


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        (dict(device="cpu", fmt="e4m3fn"), None),
        (dict(device=None, fmt="e5m2"), None),  # None: any declared device
        (dict(device="cuda", fmt="e4m3fn"), "tensors on device 'cuda'"),
        (dict(device="cpu", fmt="e5m2fnuz"), "casts to e5m2fnuz"),
        (dict(device="cpu", fmt="e4m3fn", saturate=False), "non-saturating casts"),
        (dict(device="cpu", fmt="e4m3fn", rounding="stochastic"), "stochastic rounding"),
        (dict(device="cpu", fmt="e4m3fn", granularity="rowwise"), None),
        (dict(device="cpu", fmt="e4m3fn", granularity="block_1x128"), "block_1x128 scaling"),
        # the first missing feature is named: device, format, saturation, rounding, scaling
        (dict(device="hpu", fmt="e5m2fnuz", saturate=False), "tensors on device 'hpu'"),
        (dict(device="cpu", fmt="e5m2fnuz", rounding="stochastic"), "casts to e5m2fnuz"),
    ],
)
def test_why_not_cast(kwargs, reason):
    device, fmt = kwargs.pop("device"), kwargs.pop("fmt")
    assert CAPS.why_not_cast(device, fmt, **kwargs) == reason


def test_objects_and_names_get_the_same_answers():
    fmt, gran = get_format("e5m2fnuz"), get_granularity("block_1x128")
    assert CAPS.why_not_cast("cpu", fmt) == CAPS.why_not_cast("cpu", "e5m2fnuz")
    assert CAPS.why_not_cast("cpu", "e4m3fn", granularity=gran) == "block_1x128 scaling"
    assert CAPS.why_not_decode("cpu", fmt) == "casts from e5m2fnuz"
    assert CAPS.why_not_scaling("cpu", gran) == "block_1x128 scaling"
    e4, tw = get_format("e4m3fn"), get_granularity("tensorwise")
    assert CAPS.why_not_gemm("cpu", e4, e4, tw, tw, BF16) is None


def test_why_not_decode_and_scaling():
    assert CAPS.why_not_decode("cpu", "e5m2") is None
    assert CAPS.why_not_decode("meta", "e5m2") == "tensors on device 'meta'"
    assert CAPS.why_not_decode("cpu", "e4m3fnuz") == "casts from e4m3fnuz"
    assert CAPS.why_not_scaling("cpu", "columnwise") is None
    assert CAPS.why_not_scaling("cpu", "mx_1x32") == "mx_1x32 scaling"


GEMM_OK = ("cpu", "e4m3fn", "e4m3fn", "tensorwise", "tensorwise", BF16)


@pytest.mark.parametrize(
    "args, kwargs, reason",
    [
        (GEMM_OK, {}, None),
        (GEMM_OK, dict(k=32, n=48), None),
        (("xpu", *GEMM_OK[1:]), {}, "tensors on device 'xpu'"),
        (("cpu", "e5m2", "e4m3fn", *GEMM_OK[3:]), {}, "GEMMs of e5m2 x e4m3fn"),
        (
            ("cpu", "e4m3fn", "e4m3fn", "block_1x128", "block_128x128", BF16),
            {},
            "GEMMs with block_1x128 x block_128x128 scaling",
        ),
        ((*GEMM_OK[:5], F32), {}, "GEMM output torch.float32"),
        ((*GEMM_OK[:5], None), {}, None),  # output dtype not asked
        (GEMM_OK, dict(bias=True), "GEMM bias"),
        (GEMM_OK, dict(c=True), "GEMM accumulation into c"),
        (GEMM_OK, dict(k=20, n=8), "K and N to be multiples of 16; got K=20, N=8"),
        (GEMM_OK, dict(k=32, n=24), "K and N to be multiples of 16; got K=32, N=24"),
        (GEMM_OK, dict(k=20), "K and N to be multiples of 16; got K=20, N=None"),
        ((*GEMM_OK[:5], F32), dict(k=20, n=8), "GEMM output torch.float32"),  # features first
    ],
)
def test_why_not_gemm(args, kwargs, reason):
    assert CAPS.why_not_gemm(*args, **kwargs) == reason


def test_dims_rule_with_any_multiple():
    one = Capabilities(
        devices=frozenset({"cpu"}),
        cast_formats=frozenset(),
        gemm_formats=frozenset(),
        granularities=frozenset(),
    )
    assert one.why_not_gemm_dims(7, 13) is None
    assert CAPS.why_not_gemm_dims(0, 16) is None  # 0 is a multiple of every m
    assert CAPS.why_not_gemm_dims(None, None) is None


def test_answers_do_not_leak_across_instances():
    a = Capabilities(
        devices=frozenset({"cpu"}),
        cast_formats=frozenset({"e4m3fn"}),
        gemm_formats=frozenset(),
        granularities=frozenset(),
    )
    b = Capabilities(
        devices=frozenset({"cpu"}),
        cast_formats=frozenset({"e5m2"}),
        gemm_formats=frozenset(),
        granularities=frozenset(),
    )
    assert a.why_not_cast("cpu", "e4m3fn") is None
    assert b.why_not_cast("cpu", "e4m3fn") == "casts to e4m3fn"
    assert a._answers is not b._answers


def test_why_not_device():
    assert CAPS.why_not_device("cpu") is None
    assert CAPS.why_not_device(None) is None  # any declared device
    assert CAPS.why_not_device("cuda") == "tensors on device 'cuda'"
