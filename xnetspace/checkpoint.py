"""Checkpoints: networks built from files (release checkpoints, our own spec-carrying files).

The release's key layout is mapped by :mod:`xnetspace.release` (re-exported here).

Loading never unpickles code (``torch.load(..., weights_only=True)``) and never loads half a
model: every load is checked key by key and shape by shape first, and a mismatch raises
:class:`CheckpointError` listing the offending keys.
"""

from __future__ import annotations

import os
import pickle
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from pydantic import ValidationError
from torch import Tensor

from .model import TransXNet, build_model
from .release import CheckpointError, checkpoint_filter_fn, convert_official_state_dict
from .spec import NetworkSpec, format_validation_error
from .text import shorten

__all__ = [
    "CheckpointError",
    "convert_official_state_dict",
    "checkpoint_filter_fn",
    "load_weights",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "nonfinite_keys",
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


ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


def load_weights(model: ModuleT, checkpoint: Mapping[str, Any]) -> ModuleT:
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


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with errors that say, in one paragraph, what went wrong.

    A file whose pickle names Python callables (code that unpickling would run) is refused without
    loading it, and the message does not repeat torch's advice to retry with
    ``weights_only=False``: for a file from elsewhere that is the one thing not to do.

    Raises:
        CheckpointError: a missing file or one that is not a regular file, a file that would run
            code when loaded (the callables it names are listed), or one that is not a weights-only
            torch checkpoint of a dict.
    """
    path = Path(path)
    shown = shorten(str(path))
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise CheckpointError(f"no checkpoint file at {shown!r}: it {what}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{shown} is empty, not a weights-only torch checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        code = _unsafe_globals(path)
        if code:
            raise CheckpointError(
                f"{shown} is not a weights-only torch checkpoint: its pickle names {', '.join(code[:5])}"
                f"{' ...' if len(code) > 5 else ''}, Python code that loading it would run, so it was "
                f"refused unread; a checkpoint holds tensors only"
            ) from None
        raise CheckpointError(f"{shown} is not a weights-only torch checkpoint ({_torch_reason(err)})") from None
    except Exception as err:  # noqa: BLE001 - unreadable files raise many kinds; all mean "not loadable"
        raise CheckpointError(f"{shown} is not a weights-only torch checkpoint ({_torch_reason(err)})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{shown} holds a {type(obj).__name__}, not a dict of weights")
    return dict(obj)


def _unsafe_globals(path: Path) -> list[str]:
    """The callables a checkpoint's pickle names beyond torch's weights-only allowlist, read
    without unpickling (``torch.serialization.get_unsafe_globals_in_checkpoint``; empty when it
    cannot tell, e.g. for a file in torch's legacy format)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - not a zip checkpoint, or damaged: nothing to name
        return []


def _torch_reason(err: BaseException) -> str:
    """torch's reason in one line, without its advice to load with ``weights_only=False``."""
    advice = ("weights_only", "Weights only", "documentation of torch.load", "Please file an issue")
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and not any(a in line for a in advice)]
    return shorten("; ".join(lines), 200) or type(err).__name__


def nonfinite_keys(state_dict: Mapping[str, Any]) -> list[str]:
    """Keys of the floating-point tensors in ``state_dict`` that hold a NaN or an infinity (a
    diverged training run saves such weights; every output is then NaN)."""
    return [
        k
        for k, v in state_dict.items()
        if isinstance(v, Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]


def save_checkpoint(model: TransXNet, path: str | Path, **extra: Any) -> Path:
    """Save ``model``'s weights with its spec, so the file alone rebuilds the network.

    ``extra`` entries (plain numbers, strings, lists, tensors) are stored beside them. The file is
    written through Python's own file object and synced to disk, so a full disk or a missing
    permission is an ``OSError`` (torch.save given a path reports it as a RuntimeError).

    Raises:
        OSError: the file cannot be written (ENOSPC for a full disk, EACCES, ...).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        torch.save(
            {"format": FORMAT, "spec": model.spec.model_dump(mode="json"), "state_dict": model.state_dict(), **extra},
            file,
        )
        file.flush()
        if stat.S_ISREG(os.fstat(file.fileno()).st_mode):  # a full disk may only show at write-back
            os.fsync(file.fileno())
    return path


def load_checkpoint(path: str | Path, spec: NetworkSpec | None = None) -> TransXNet:
    """Rebuild a network from a checkpoint file and load its weights strictly.

    Our own files carry their spec; a release file needs ``spec`` (e.g. ``load_preset(...)``).

    Raises:
        CheckpointError: unreadable file, a release file without ``spec``, a stored spec that
            is missing or not valid (its problems listed), or weights that do not fit (offending
            keys listed).
    """
    obj = read_checkpoint(path)
    if obj.get("format") == FORMAT:
        if not isinstance(obj.get("spec"), Mapping):
            raise CheckpointError(f"{shorten(str(path))} is marked {FORMAT} but holds no spec (a mapping under 'spec')")
        try:
            stored = NetworkSpec.model_validate(obj["spec"])
        except ValidationError as err:
            raise CheckpointError(format_validation_error(err, f"spec stored in {shorten(str(path))}")) from None
        if spec is not None and spec.digest() != stored.digest():
            raise CheckpointError(f"{path} holds network {stored.name!r}, not the spec given ({spec.name!r})")
        spec = stored
    elif spec is None:
        raise CheckpointError(f"{path} is a release checkpoint and carries no spec; pass spec=")
    return load_weights(build_model(spec).eval(), obj)
