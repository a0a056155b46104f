"""Checkpoints: networks built from files (release checkpoints, our own spec-carrying files).

The release's key layout is mapped by :mod:`xnetspace.release` (re-exported here).

Loading never unpickles code (``torch.load(..., weights_only=True)``) and never loads half a
model: every load is checked key by key and shape by shape first, and a mismatch raises
:class:`CheckpointError` listing the offending keys.
"""

from __future__ import annotations

import itertools
import os
import pickle
import pickletools
import stat
import warnings
import zipfile
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
        with warnings.catch_warnings():  # a raw pickle's protocol: torch warns, then refuses it below
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
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
    without unpickling: ``torch.serialization.get_unsafe_globals_in_checkpoint`` for torch's zip
    format, :func:`_pickled_globals` for any other file (a raw pickle, torch's legacy format);
    empty when it cannot tell (a damaged file)."""
    try:
        if zipfile.is_zipfile(path):
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        return [name for name in _pickled_globals(path) if name not in _allowed_globals()]
    except Exception:  # noqa: BLE001 - damaged, or not a pickle at all: nothing to name
        return []


def _allowed_globals() -> set[str]:
    """The callables torch's weights-only unpickler allows (the set its own zip check uses)."""
    from torch import _weights_only_unpickler

    return set(_weights_only_unpickler._get_allowed_globals())


_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_MEMO_GETS = {"GET", "BINGET", "LONG_BINGET"}
_MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}


def _pickled_globals(path: Path, max_pickles: int = 4, max_ops: int = 1_000_000) -> list[str]:
    """The callables (``module.name``) named by the first ``max_pickles`` pickles of a file, in
    order, read with ``pickletools.genops``, which decodes opcodes and runs nothing. torch's legacy
    format is a few pickles in a row (a magic number, the protocol, system facts, the object);
    a raw pickle is one. Reading stops at the end of the file, at bytes that are no pickle, or
    after ``max_ops`` opcodes.

    Protocol 4's ``STACK_GLOBAL`` takes its module and name from the two strings pushed before it,
    directly or through the memo.
    """
    names: list[str] = []
    strings: list[str] = []  # the strings pushed so far, the last ones on top of the stack
    memo: dict[Any, Any] = {}
    with open(path, "rb") as file:
        ops = itertools.chain.from_iterable(pickletools.genops(file) for _ in range(max_pickles))
        top: Any = None  # what the last opcode pushed
        try:
            for op, arg, _position in itertools.islice(ops, max_ops):
                if op.name in _STRINGS or op.name in _MEMO_GETS:
                    top = arg if op.name in _STRINGS else memo.get(arg)
                    if isinstance(top, str):
                        strings.append(top)
                    continue
                if op.name in _MEMO_PUTS or op.name == "MEMOIZE":
                    memo[len(memo) if op.name == "MEMOIZE" else arg] = top
                    continue
                if op.name in ("GLOBAL", "INST"):  # arg: "module name"
                    names.append(".".join(str(arg).split(" ", 1)))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                top = None
        except ValueError:  # genops: the file ended, or what follows is not a pickle
            pass
    return list(dict.fromkeys(names))


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
    """Save ``model``'s weights with its spec and form (``"fused"`` once re-parameterised, else
    ``"reference"``: the fast form's weights are the reference's), so the file alone rebuilds it.

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
            {
                "format": FORMAT,
                "spec": model.spec.model_dump(mode="json"),
                "form": "fused" if model.is_reparameterized else "reference",
                "state_dict": model.state_dict(),
                **extra,
            },
            file,
        )
        file.flush()
        if stat.S_ISREG(os.fstat(file.fileno()).st_mode):  # a full disk may only show at write-back
            os.fsync(file.fileno())
    return path


def load_checkpoint(path: str | Path, spec: NetworkSpec | None = None) -> TransXNet:
    """Rebuild a network from a checkpoint file and load its weights strictly.

    Our own files carry their spec and form: a re-parameterised network's file rebuilds the
    inference form directly (``TransXNet(spec, form="fused")``); files from before the form was
    stored are the reference form's. A release file needs ``spec`` (e.g. ``load_preset(...)``).

    Raises:
        CheckpointError: unreadable file, a release file without ``spec``, a stored spec that
            is missing or not valid (its problems listed), a stored form other than ``"reference"``
            and ``"fused"``, or weights that do not fit (offending keys listed).
    """
    obj = read_checkpoint(path)
    form = obj.get("form", "reference")
    if form not in ("reference", "fused"):
        raise CheckpointError(f"{shorten(str(path))} stores form {str(form)[:80]!r}; expected 'reference' or 'fused'")
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
    return load_weights(build_model(spec, form=form).eval(), obj)
