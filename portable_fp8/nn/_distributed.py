"""Amax reduction across ranks: the one place :mod:`.linear` talks to ``torch.distributed``.

Contract: :func:`reduction_group` says which process group a layer's amaxes are reduced
over (None: none), and :func:`reduce_amaxes` reduces several amaxes, and whether each came
from a non-empty tensor, in one MAX all-reduce of one fp32 vector. The MAX of amaxes is
exact (no rounding, any order), so every rank gets the same bits as one process that saw
all the ranks' tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import Fp8ValueError
from .recipes import CurrentScaling, Recipe


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def reduction_group(recipe: Recipe, group):
    """The process group to reduce ``recipe``'s amaxes over, or None for no reduction.

    Delayed scaling reduces by default (``reduce_amax=True``) whenever torch.distributed is
    initialised, over ``group`` or else the default (world) group; without an initialised
    default group it reduces nothing. Current scaling reduces only when asked
    (``CurrentScaling(reduce_amax=True)``), and then needs torch.distributed initialised.
    """
    if not getattr(recipe, "reduce_amax", False):
        return None
    if not _dist_ready():
        if isinstance(recipe, CurrentScaling):
            raise Fp8ValueError(
                "CurrentScaling(reduce_amax=True) needs torch.distributed initialised "
                "(torch.distributed.init_process_group) to all-reduce the amax"
            )
        return None
    return group if group is not None else torch.distributed.group.WORLD


def reduce_amaxes(
    tensors: Sequence[torch.Tensor], amaxes: Sequence[torch.Tensor], group
) -> tuple[list[torch.Tensor], list[bool]]:
    """Reduced (amax, non-empty on some rank) of each tensor, in one MAX all-reduce.

    ``amaxes[i]`` is the local 0-d fp32 amax of ``tensors[i]``. Every rank of ``group`` must
    call this with the same number of tensors (an empty tensor still takes part).
    """
    local = torch.stack([a.reshape(()).to(torch.float32) for a in amaxes])
    flags = torch.tensor([float(t.numel() > 0) for t in tensors], device=local.device)
    vec = torch.cat([local, flags])
    torch.distributed.all_reduce(vec, op=torch.distributed.ReduceOp.MAX, group=group)
    n = len(amaxes)
    return list(vec[:n].unbind()), [bool(v) for v in vec[n:].tolist()]
