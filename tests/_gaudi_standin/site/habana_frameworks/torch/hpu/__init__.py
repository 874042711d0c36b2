"""STAND-IN, NOT HARDWARE: an "HPU" that is present, named after the stand-in's generation."""

from _gaudi_standin.ops import STATE


def is_available() -> bool:
    return True


def get_device_name() -> str:
    return STATE["generation"].upper()
