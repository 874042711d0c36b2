"""Adam / AdamW with both moments stored as FP8 codes plus one fp32 scale per block.

Each moment is flattened, padded to a multiple of ``block_size`` and viewed as
``(n_blocks, block_size)``; it is quantised rowwise through :func:`portable_fp8.quantize`
(so every backend uses its own casts) and dequantised for the update. Defaults follow
Fishman et al. 2024 ("Scaling FP8 training to trillion-token LLMs"): first moment in E4M3
(precision for a signed, moderately ranged quantity), second moment in E5M2 (FP8-LM, Peng et
al. 2023, argue the second moment needs the wider range: its values span the square of the
gradient range). Master weights stay in the parameter's dtype.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from portable_fp8.dispatch.ops import dequantize, quantize
from portable_fp8.errors import Fp8ValueError
from portable_fp8.numerics.tensor import Fp8Tensor

__all__ = ["Adam", "AdamW"]


def _pack(x: torch.Tensor, fmt: str, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (uint8 view) and rowwise scales of flat fp32 ``x`` in blocks of ``block``."""
    flat = x.reshape(-1).float()
    pad = (-flat.numel()) % block
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    q = quantize(flat.view(-1, block), fmt, granularity="rowwise")
    return q.data, q.scale


def _unpack(data: torch.Tensor, scale: torch.Tensor, fmt: str, shape: torch.Size) -> torch.Tensor:
    from portable_fp8.numerics.formats import get_format
    from portable_fp8.numerics.granularity import get_granularity

    t = Fp8Tensor(data, scale, get_format(fmt), get_granularity("rowwise"))
    n = 1
    for d in shape:
        n *= d
    return dequantize(t).reshape(-1)[:n].view(shape)


class AdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay) with FP8 block-scaled moments.

    State per parameter: ``exp_avg`` / ``exp_avg_sq`` codes (1 byte per element each) and
    fp32 scales (4 bytes per block of ``block_size``).
    """

    _decoupled = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        block_size: int = 128,
        exp_avg_format: str = "e4m3fn",
        exp_avg_sq_format: str = "e5m2",
    ) -> None:
        if not lr >= 0.0:
            raise Fp8ValueError(f"lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise Fp8ValueError(f"betas must lie in [0, 1), got {betas}")
        if not eps >= 0.0:
            raise Fp8ValueError(f"eps must be >= 0, got {eps}")
        if not weight_decay >= 0.0:
            raise Fp8ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if not isinstance(block_size, int) or block_size < 1:
            raise Fp8ValueError(f"block_size must be a positive int, got {block_size!r}")
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            block_size=block_size,
            exp_avg_format=exp_avg_format,
            exp_avg_sq_format=exp_avg_sq_format,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One optimisation step (the torch.optim.AdamW update on dequantised moments)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for g in self.param_groups:
            b1, b2 = g["betas"]
            bs, f1, f2 = g["block_size"], g["exp_avg_format"], g["exp_avg_sq_format"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.float()
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    m = torch.zeros_like(grad)
                    v = torch.zeros_like(grad)
                else:
                    m = _unpack(st["exp_avg"], st["exp_avg_scale"], f1, p.shape)
                    v = _unpack(st["exp_avg_sq"], st["exp_avg_sq_scale"], f2, p.shape)
                st["step"] += 1
                t = st["step"]
                if g["weight_decay"]:
                    if self._decoupled:
                        p.mul_(1 - g["lr"] * g["weight_decay"])
                    else:
                        grad = grad + g["weight_decay"] * p.float()
                m.mul_(b1).add_(grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                denom = (v / (1 - b2**t)).sqrt_().add_(g["eps"])
                p.add_((m / (1 - b1**t) / denom).to(p.dtype), alpha=-g["lr"])
                st["exp_avg"], st["exp_avg_scale"] = _pack(m, f1, bs)
                st["exp_avg_sq"], st["exp_avg_sq_scale"] = _pack(v, f2, bs)
        return loss


class Adam(AdamW):
    """Adam (L2 weight decay added to the gradient) with FP8 block-scaled moments."""

    _decoupled = False

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        **kw: Any,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, **kw)
