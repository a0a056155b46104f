"""Checkpoints: the release's key layout mapped onto ours, and our own spec-carrying files.

Loading never unpickles code (``torch.load(..., weights_only=True)``) and never loads half a
model: every load is checked key by key and shape by shape first, and a mismatch raises
:class:`CheckpointError` listing the offending keys.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from timm.models._helpers import clean_state_dict
from torch import Tensor

from .network import TransXNet, build_model
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
_WRAPPER_KEYS = ("state_dict_ema", "state_dict", "model")  # timm's preference: EMA weights first

# Block-relative renames, release -> ours (ARCHITECTURE.md, "The release's checkpoint layout").
_BLOCK_RULES = [
    (r"^pos_embed\.", "dpe."),
    (r"^token_mixer\.local_unit\.", "mixer.idconv."),
    (r"^token_mixer\.global_unit\.", "mixer.osra."),
    (r"^token_mixer\.proj\.0\.", "mixer.ste.conv_dw."),
    (r"^token_mixer\.proj\.2\.", "mixer.ste.bn_dw."),
    (r"^token_mixer\.proj\.3\.", "mixer.ste.conv_reduce."),
    (r"^token_mixer\.proj\.5\.", "mixer.ste.bn_reduce."),
    (r"^token_mixer\.proj\.6\.", "mixer.ste.conv_expand."),
    (r"^token_mixer\.proj\.7\.", "mixer.ste.bn_expand."),
    (r"^mlp\.fc1\.0\.", "ffn.fc1."),
    (r"^mlp\.fc1\.2\.", "ffn.fc1_bn."),
    (r"^mlp\.dwconv\.proj\.", "ffn.msdw.convs."),
    (r"^mlp\.norm\.", "ffn.norm."),
    (r"^mlp\.fc2\.0\.", "ffn.fc2.conv."),
    (r"^mlp\.fc2\.1\.", "ffn.fc2.bn."),
    (r"^layer_scale_(\d)\.", r"layer_scale\1."),
    (r"^(norm[12])\.", r"\1."),
]


class CheckpointError(ValueError):
    """A checkpoint that does not fit the network; the message lists the offending keys and
    ``problems`` holds all of them (``"missing: key"``, ``"unexpected: key"``, ``"shape: ..."``)."""

    def __init__(self, message: str, problems: Optional[list[str]] = None):
        super().__init__(message)
        self.problems = problems or []


def _unwrap(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    """The state dict inside a release/timm file: bare, or under state_dict_ema/state_dict/model."""
    for key in _WRAPPER_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            return checkpoint[key]
    return checkpoint


def _rename(key: str) -> Optional[str]:
    """Our name for a release key, or None when the key is not of the release's layout."""
    if m := re.fullmatch(r"patch_embed\.proj\.(.+)", key):
        return f"stem.{m[1]}"
    if m := re.fullmatch(r"relative_pos_enc\.(\d+)", key):
        return f"stages.{m[1]}.pos_bias"
    if m := re.fullmatch(r"classifier\.0\.(weight|bias)", key):
        return f"head.norm.{m[1]}"
    if m := re.fullmatch(r"classifier\.2\.(weight|bias)", key):
        return f"head.fc.{m[1]}"
    if m := re.fullmatch(r"network\.(\d+)\.proj\.(.+)", key):
        index = int(m[1])  # odd entries are the downsample after stage (index - 1) / 2
        return f"stages.{(index + 1) // 2}.downsample.{m[2]}" if index % 2 else None
    if m := re.fullmatch(r"network\.(\d+)\.(\d+)\.(.+)", key):
        index, rest = int(m[1]), m[3]
        if index % 2:
            return None
        for pattern, repl in _BLOCK_RULES:
            if re.match(pattern, rest):
                return f"stages.{index // 2}.blocks.{m[2]}.{re.sub(pattern, repl, rest)}"
    return None


def _is_ours(state_dict: Mapping[str, Any]) -> bool:
    return any(k.startswith(("stem.", "stages.")) for k in state_dict)


def convert_official_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Tensor]:
    """Map a release checkpoint (github LMMMEng/TransXNet) onto this package's key layout.

    Accepts the release's file forms: a bare state dict, or a dict holding it under
    ``state_dict_ema``, ``state_dict`` or ``model`` (looked up in that order, as timm does);
    ``module.`` prefixes are removed. The head's 1x1 conv (n, C, 1, 1) becomes a linear (n, C).
    A state dict already in our layout passes through unchanged.

    Raises:
        CheckpointError: keys that fit neither layout (all of them listed).
    """
    state_dict = clean_state_dict(dict(_unwrap(state_dict)))
    if _is_ours(state_dict):
        return dict(state_dict)
    out, unknown = {}, []
    for key, value in state_dict.items():
        new = _rename(key)
        if new is None:
            unknown.append(key)
            continue
        if new == "head.fc.weight" and value.ndim == 4:
            value = value.flatten(1)
        out[new] = value
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} keys are not of the TransXNet release layout (a release built with equal "
            f"neighbouring widths, which drops a downsample, is not supported): {unknown[:20]}"
            + (" ..." if len(unknown) > 20 else "")
        )
    return out


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: torch.nn.Module) -> dict[str, Tensor]:
    """timm's ``pretrained_filter_fn``: release or own weights -> our layout."""
    return convert_official_state_dict(state_dict)


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
