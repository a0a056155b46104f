"""xnetspace: the design space of TransXNet (arXiv 2310.19380), its exact builder and its search.

Importing the package registers ``transxnet_t``, ``transxnet_s``, ``transxnet_b`` and ``transxnet``
(any spec: ``timm.create_model("transxnet", spec=...)``) with timm.

Imports point one way, down toward the spec (``tests/test_imports.py`` keeps it so). The network
and its cost: spec -> cost; spec -> ops -> deploy -> layers -> network -> (checkpoint, latency,
timm_models), with release (the authors' key layout, pure dicts) below checkpoint and timm_models.
The search and its evidence (``xnetspace.search``) import the network side, never the reverse;
the command line (cli) sits on top.
"""
from .checkpoint import (
    CheckpointError,
    convert_official_state_dict,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from .network import TransXNet, build_model
from . import timm_models  # noqa: F401 - registers the timm names
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
