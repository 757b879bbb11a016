"""Models: loading, architectures and where their heads are, inputs, images, capturing heads, features.

The names below load on first use (PEP 562), so that `guard.models.images` can be imported by
policy code without pulling in torch and transformers.
"""

import importlib

_EXPORTS = {
    "ARCHITECTURES": "guard.models.architectures",
    "Architecture": "guard.models.architectures",
    "HeadLayout": "guard.models.architectures",
    "register_architecture": "guard.models.architectures",
    "LoadedModel": "guard.models.loaded",
    "load_model": "guard.models.loaded",
    "set_threads": "guard.models.loaded",
    "BUNDLED": "guard.models.loading",
    "ModelSource": "guard.models.loading",
    "resolve": "guard.models.loading",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'guard.models' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
