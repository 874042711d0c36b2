"""The dispatch layer: what a backend is (:mod:`.backend`), the plugin hooks
(:mod:`.hookspecs`), the registry that chooses a backend (:mod:`.registry`) and the op API
that validates a call once and hands it to that backend (:mod:`.ops`).

It builds on :mod:`portable_fp8.numerics` and nothing above it.
"""
