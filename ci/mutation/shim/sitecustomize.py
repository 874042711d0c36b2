"""Point the editable install of portable_fp8 at the mutation scratch tree.

ci/mutation/run.sh puts this directory on PYTHONPATH and sets ``MUTATION_ROOT`` to the
scratch copy that cosmic-ray mutates; the project's virtual environment (installed editable
from the developer's tree) then imports ``portable_fp8``, ``portable_fp8.backends`` and
``portable_fp8.conformance`` from the scratch copy instead. Without ``MUTATION_ROOT`` this
does nothing.
"""

import os
import sys

_root = os.environ.get("MUTATION_ROOT")
if _root:
    _roots = {"portable_fp8": "portable_fp8", "portable_fp8.backends": "backends",
              "portable_fp8.conformance": "conformance"}  # fmt: skip
    for _mod in list(sys.modules.values()):
        _mapping = getattr(_mod, "MAPPING", None)
        if (getattr(_mod, "__name__", "").startswith("__editable__")
                and isinstance(_mapping, dict) and "portable_fp8" in _mapping):  # fmt: skip
            for _name, _folder in _roots.items():
                _mapping[_name] = os.path.join(_root, _folder)
