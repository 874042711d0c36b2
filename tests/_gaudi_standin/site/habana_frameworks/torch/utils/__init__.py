"""STAND-IN, NOT HARDWARE: fake ``habana_frameworks.torch.utils``."""
