"""Built-in backend plugins of portable-fp8 (installed as ``portable_fp8.backends``)."""
