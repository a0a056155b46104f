"""xnetspace: the design space of TransXNet (arXiv 2310.19380), its exact builder and its search.

Importing the package registers ``transxnet_t``, ``transxnet_s``, ``transxnet_b`` and ``transxnet``
(any spec: ``timm.create_model("transxnet", spec=...)``) with timm.

Layout, from the bottom up (imports point one way, down toward the spec; ``tests/test_imports.py``
keeps it so)::

    errors, text          SpecError; reading spec and space files safely, short quotes
    spec                  the spec model: StageSpec, NetworkSpec, bounds, presets, load/save
    model/                one module per operator family (stem, dpe, idconv, osra, mixer, ffn,
                          block, head) over the shared kernels, folds and convs (xnetspace.model)
    cost, memory          walkers summing those operators' cost() over a spec: params, FLOPs,
                          bytes
    model/network         the network: TransXNet, build_model (which checks memory first)
    timing, scaling       build-time estimate; specs scaled to a FLOP budget
    release               the authors' key layout (pure dicts), below checkpoint and timm_models
    checkpoint, pack,     files, packed replicas, timm registrations, measured latency, the
    timm_models, latency, presets' evaluation preprocessing and a photograph (build's input)
    photo
    search/               the search and its evidence: imports the model side, never the reverse
    cli                   the command line, on top (``build`` imports nothing from search/)
"""

from . import timm_models  # noqa: F401 - registers the timm names
from .checkpoint import (
    CheckpointError,
    convert_official_state_dict,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from .model import TransXNet, build_model
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
