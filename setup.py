"""Package discovery by one prefix rule (all other metadata is in pyproject.toml).

The core lives in ``portable_fp8/``; the backends and the conformance suite are peers of it
at the top of the tree and install under it: ``backends/X`` is ``portable_fp8.backends.X``,
``conformance/X`` is ``portable_fp8.conformance.X``. Every package below each root is found
here, so a new subpackage needs no packaging edit.
"""

from setuptools import find_packages, setup

ROOTS = {"portable_fp8": "portable_fp8", "backends": "portable_fp8.backends",
         "conformance": "portable_fp8.conformance"}  # fmt: skip

packages, package_dir = [], {}
for folder, name in ROOTS.items():
    package_dir[name] = folder
    packages += [name] + [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=package_dir)
