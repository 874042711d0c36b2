"""STAND-IN, NOT HARDWARE: the device-type query vLLM-Gaudi and DeepSpeed use."""

import enum

from _gaudi_standin.ops import STATE


class synDeviceType(enum.Enum):  # noqa: N801 (the bridge's own spelling)
    synDeviceGaudi = 1
    synDeviceGaudi2 = 2
    synDeviceGaudi3 = 3


def _get_device_type() -> synDeviceType:
    return (
        synDeviceType.synDeviceGaudi3
        if STATE["generation"] == "gaudi3"
        else (synDeviceType.synDeviceGaudi2)
    )
