"""xnetspace: the design space of TransXNet (arXiv 2310.19380), its exact builder and its search.

Importing the package registers ``transxnet_t``, ``transxnet_s`` and ``transxnet_b`` with timm.
"""
from .checkpoint import (
    CheckpointError,
    convert_official_state_dict,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from .network import TransXNet, build_model
from .spec import (
    NetworkSpec,
    SpecError,
    StageSpec,
    format_validation_error,
    load_preset,
    load_spec,
    preset_names,
    save_spec,
)

__version__ = "0.1.0"

__all__ = [
    "NetworkSpec",
    "StageSpec",
    "SpecError",
    "format_validation_error",
    "load_spec",
    "save_spec",
    "load_preset",
    "preset_names",
    "TransXNet",
    "build_model",
    "convert_official_state_dict",
    "load_weights",
    "save_checkpoint",
    "load_checkpoint",
    "CheckpointError",
]
