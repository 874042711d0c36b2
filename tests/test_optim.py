"""FP8-moment Adam/AdamW against torch.optim.AdamW."""

import pytest
import torch

from portable_fp8.errors import Fp8ValueError
from portable_fp8.optim import AdamW


def _problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=g)
    y = x @ torch.randn(16, 1, generator=g)
    return x, y


def _train(opt_cls, steps=300):
    x, y = _problem()
    torch.manual_seed(1)
    w = torch.nn.Parameter(torch.zeros(16, 1))
    opt = opt_cls([w], lr=1e-2, weight_decay=0.0)
    for _ in range(steps):
        opt.zero_grad()
        loss = ((x @ w - y) ** 2).mean()
        loss.backward()
        opt.step()
    return float(((x @ w - y) ** 2).mean())


def test_converges_near_torch():
    ref, ours = _train(torch.optim.AdamW), _train(AdamW)
    # Margin: 10 % of the initial loss scale is loose; this only checks convergence.
    assert ours < 0.1 * _train(torch.optim.AdamW, steps=0) and ours < ref + 0.05


def test_state_bytes():
    w = torch.nn.Parameter(torch.randn(1024))
    opt = AdamW([w], block_size=128)
    w.grad = torch.randn(1024)
    opt.step()
    st = opt.state[w]
    nbytes = sum(v.numel() * v.element_size() for v in st.values() if torch.is_tensor(v))
    assert nbytes / 1024 == 2 + 2 * 4 / 128


def test_bad_args():
    w = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(Fp8ValueError):
        AdamW([w], lr=-1)
    with pytest.raises(Fp8ValueError):
        AdamW([w], block_size=0)
