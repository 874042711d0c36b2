"""The conformance suite (installed as ``portable_fp8.conformance``)."""
