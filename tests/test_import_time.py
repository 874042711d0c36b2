"""``import portable_fp8`` costs little more than ``import torch``.

The heavy modules (``torch._dynamo``, ``triton``, a backend's vendor library) load on first
use: torch._dynamo when an FP8 Linear is built (so torch.compile can trace it), Triton when a
Triton kernel first runs.
"""

from __future__ import annotations

import subprocess
import sys
import time

#: The budget the package may add to ``import torch`` (seconds, wall time).
IMPORT_BUDGET_S = 0.3


def _wall_time(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - start


def _fastest(code: str, runs: int = 3) -> float:
    """The minimum over ``runs`` fresh interpreters: other load on the machine only adds."""
    return min(_wall_time(code) for _ in range(runs))


def test_import_adds_at_most_the_budget_over_torch():
    torch_s = _fastest("import torch")
    ours_s = _fastest("import portable_fp8")
    assert ours_s - torch_s <= IMPORT_BUDGET_S, (
        f"import portable_fp8 took {ours_s:.2f} s against {torch_s:.2f} s for import torch "
        f"(budget: +{IMPORT_BUDGET_S} s); see python -X importtime -c 'import portable_fp8'"
    )


def _loaded_after(code: str, modules: tuple[str, ...]) -> list[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {modules!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    return out.stdout.split()


def test_import_loads_neither_dynamo_nor_triton():
    heavy = ("torch._dynamo", "triton")
    code = "import portable_fp8\nportable_fp8.nn.Linear, portable_fp8.convert"
    assert _loaded_after(code, heavy) == []
    # The public names reach the op layer and the registry without loading them either.
    code += "\nportable_fp8.list_backends()"
    assert _loaded_after(code, heavy) == []


def test_building_a_linear_prepares_for_compile():
    # Linear.__init__ marks the constant-result helper, which needs torch._dynamo.
    code = "import portable_fp8\nportable_fp8.nn.Linear(8, 8)"
    assert _loaded_after(code, ("torch._dynamo",)) == ["torch._dynamo"]


def test_unpickled_linear_compiles_fullgraph(tmp_path):
    # Unpickling skips __init__; the layer must still be ready before torch.compile traces it.
    path = tmp_path / "linear.pt"
    save = f"import torch, portable_fp8\ntorch.save(portable_fp8.nn.Linear(16, 16), {str(path)!r})"
    subprocess.run([sys.executable, "-c", save], check=True, capture_output=True)
    load = (
        "import torch, portable_fp8\n"
        f"m = torch.load({str(path)!r}, weights_only=False)\n"
        "x = torch.randn(4, 16)\n"
        "y = torch.compile(m, fullgraph=True, backend='eager')(x)\n"
        "assert torch.equal(y, m(x)), 'compiled and eager outputs differ'\n"
    )
    run = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
