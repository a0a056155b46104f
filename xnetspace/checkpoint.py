"""Checkpoints: networks built from files (release checkpoints, our own spec-carrying files).

The release's key layout is mapped by :mod:`xnetspace.release` (re-exported here).

Loading never unpickles code (``torch.load(..., weights_only=True)``) and never loads half a
model: every load is checked key by key and shape by shape first, and a mismatch raises
:class:`CheckpointError` listing the offending keys.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import Tensor

from .network import TransXNet, build_model
from .release import CheckpointError, checkpoint_filter_fn, convert_official_state_dict
from .spec import NetworkSpec

__all__ = [
    "CheckpointError",
    "convert_official_state_dict",
    "checkpoint_filter_fn",
    "load_weights",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
]

FORMAT = "xnetspace.checkpoint/1"


def _mismatches(model: torch.nn.Module, state_dict: Mapping[str, Tensor]) -> list[str]:
    expected = model.state_dict()
    problems = [  # shapes first: they tell a wrong variant at a glance
        f"shape: {k} is {tuple(v.shape)} in the checkpoint, {tuple(expected[k].shape)} in the model"
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    problems += [f"missing: {k}" for k in expected if k not in state_dict]
    return problems + [f"unexpected: {k}" for k in state_dict if k not in expected]


def load_weights(model: torch.nn.Module, checkpoint: Mapping[str, Any]) -> torch.nn.Module:
    """Load a release or own checkpoint (file contents or state dict) into ``model``, strictly.

    Raises:
        CheckpointError: any missing, unexpected or differently shaped key (all listed); the
            model is left untouched.
    """
    state_dict = convert_official_state_dict(checkpoint)
    problems = _mismatches(model, state_dict)
    if problems:
        shown = "\n  ".join(problems[:30]) + ("\n  ..." if len(problems) > 30 else "")
        raise CheckpointError(f"checkpoint does not fit the network ({len(problems)} problems):\n  {shown}", problems)
    model.load_state_dict(state_dict, strict=True)
    return model


def read_checkpoint(path: Union[str, Path]) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with errors that say what went wrong.

    Raises:
        CheckpointError: missing file, or a file that is not a weights-only torch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {str(path)!r}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling raises many kinds; all mean "not loadable"
        raise CheckpointError(f"{path} is not a weights-only torch checkpoint: {err}") from err
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a dict of weights")
    return dict(obj)


def save_checkpoint(model: TransXNet, path: Union[str, Path], **extra: Any) -> Path:
    """Save ``model``'s weights with its spec, so the file alone rebuilds the network.

    ``extra`` entries (plain numbers, strings, lists, tensors) are stored beside them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "spec": model.spec.model_dump(mode="json"),
                "state_dict": model.state_dict(), **extra}, path)
    return path


def load_checkpoint(path: Union[str, Path], spec: Optional[NetworkSpec] = None) -> TransXNet:
    """Rebuild a network from a checkpoint file and load its weights strictly.

    Our own files carry their spec; a release file needs ``spec`` (e.g. ``load_preset(...)``).

    Raises:
        CheckpointError: unreadable file, a release file without ``spec``, or weights that do not
            fit (offending keys listed).
        pydantic.ValidationError: a stored spec that is not valid.
    """
    obj = read_checkpoint(path)
    if obj.get("format") == FORMAT:
        stored = NetworkSpec.model_validate(obj["spec"])
        if spec is not None and spec.digest() != stored.digest():
            raise CheckpointError(f"{path} holds network {stored.name!r}, not the spec given ({spec.name!r})")
        spec = stored
    elif spec is None:
        raise CheckpointError(f"{path} is a release checkpoint and carries no spec; pass spec=")
    return load_weights(build_model(spec).eval(), obj)
