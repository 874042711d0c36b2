"""STAND-IN, NOT HARDWARE: fake ``habana_frameworks.torch`` (see the package docstring)."""

__version__ = "0.0.0+portable-fp8-standin"
