"""Loading models and describing where their attention heads are."""

from guard.models.architectures import ARCHITECTURES, Architecture, HeadLayout, register_architecture
from guard.models.loaded import LoadedModel, load_model, set_threads
from guard.models.loading import BUNDLED, ModelSource, resolve

__all__ = [
    "ARCHITECTURES",
    "BUNDLED",
    "Architecture",
    "HeadLayout",
    "LoadedModel",
    "ModelSource",
    "load_model",
    "register_architecture",
    "resolve",
    "set_threads",
]
