"""A backend's declared capabilities in words, for people (the CLI listing, the reports).

Works on the JSON-friendly form (``Capabilities.as_dict()``, also what a JSON report holds),
so a report read back from disk reads the same as a live backend. Pairs there are joined
by ``x`` (``block_1x128xblock_128x128``); :func:`split_pair` takes them apart at the ``x``
that leaves a known name on both sides, since names may hold an ``x`` themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from portable_fp8.numerics.formats import FORMATS
from portable_fp8.numerics.granularity import GRANULARITIES

__all__ = ["split_pair", "pair_text", "accumulator_text", "capability_rows", "TIMES"]

#: The multiplication sign joining a pair ("tensorwise × tensorwise").
TIMES = "\N{MULTIPLICATION SIGN}"

_KNOWN = frozenset(GRANULARITIES) | frozenset(FORMATS)


def split_pair(joined: str, known: Iterable[str] = _KNOWN) -> tuple[str, str] | None:
    """``(a, b)`` from ``"axb"`` where both are names in ``known``; None where no ``x``
    splits it so (an unknown name is not guessed at)."""
    names = set(known)
    for i, ch in enumerate(joined):
        if ch == "x" and joined[:i] in names and joined[i + 1 :] in names:
            return joined[:i], joined[i + 1 :]
    return None


def pair_text(joined: str, times: str = TIMES) -> str:
    """``"tensorwise × tensorwise"`` for ``"tensorwisextensorwise"``; an unknown name is
    shown as it is."""
    pair = split_pair(joined)
    return joined if pair is None else f"{pair[0]} {times} {pair[1]}"


def _rounding_word(rounding: str) -> str:
    return {"nearest": "round to nearest even", "truncate": "truncation (toward zero)"}.get(
        rounding, rounding
    )


def accumulator_text(acc: Any) -> str:
    """An accumulator model (``vars(AccumulatorModel)``, ``"exact"`` or None) in words."""
    if acc is None:
        return "none declared (fast_accum=True runs the default accumulator)"
    if acc == "exact":
        return "exact (each block sum exact, rounded once to the output dtype)"
    if not isinstance(acc, Mapping):
        return str(acc)
    bits = acc.get("mantissa_bits")
    group = acc.get("group", 1)
    promote = acc.get("promote_every")
    fp32 = bits == 23 and acc.get("rounding") == "nearest" and group == 1 and promote is None
    words = [
        "fp32 (23 fraction bits)" if bits == 23 else f"{bits} fraction bits",
        _rounding_word(str(acc.get("rounding", "nearest"))),
        "one product at a time"
        if group in (1, None)
        else f"{group} products summed exactly per addition",
    ]
    if promote:
        words.append(f"promoted into fp32 every {promote} elements of K")
    return ("IEEE " if fp32 else "") + ", ".join(words)


def _pairs(joined: Iterable[str], times: str) -> str:
    """Pairs in words, sorted by their first then second name."""
    return _names(pair_text(p, times) for p in sorted(joined, key=lambda p: split_pair(p) or (p,)))


def _yes(flag: Any) -> str:
    return "yes" if flag else "no"


def _names(values: Iterable[Any]) -> str:
    values = list(values)
    return ", ".join(str(v) for v in values) if values else "none"


def capability_rows(caps: Mapping[str, Any], times: str = TIMES) -> list[tuple[str, str]]:
    """(label, words) for every declared capability, in reading order.

    Labels and words are plain text (callers escape them for HTML or Markdown)."""
    mult = caps.get("gemm_dim_multiple", 1)
    rows = [
        ("devices", _names(caps.get("devices", ()))),
        ("cast formats", _names(caps.get("cast_formats", ()))),
        ("scaling granularities", _names(caps.get("granularities", ()))),
        ("rounding", _names(caps.get("rounding", ()))),
        ("non-saturating casts", _yes(caps.get("non_saturating"))),
        ("GEMM format pairs (A × B)".replace("×", times),
         _pairs(caps.get("gemm_formats", ()), times)),
        ("GEMM granularity pairs (A × B)".replace("×", times),
         _pairs(caps.get("gemm_granularities", ()), times)),
        ("GEMM output dtypes", _names(caps.get("out_dtypes", ()))),
        ("GEMM accumulator", accumulator_text(caps.get("accumulator", "exact"))),
        ("fast_accum=True accumulator", accumulator_text(caps.get("fast_accumulator"))),
        ("GEMM bias", _yes(caps.get("gemm_bias"))),
        ("GEMM accumulate into C", _yes(caps.get("gemm_accumulate"))),
        ("GEMM K and N", "any size" if mult in (None, 1) else f"multiples of {mult}"),
        ("two-level (global) scales", _yes(caps.get("global_scale"))),
    ]  # fmt: skip
    notes = list(caps.get("notes", ()))
    if notes:
        rows.append(("notes", "; ".join(str(n) for n in notes)))
    return rows
