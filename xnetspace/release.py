"""The authors' release (github LMMMEng/TransXNet) key layout mapped onto ours: pure dict functions.

No network is built here: it sits below :mod:`xnetspace.model.network`, and both the timm registrations
(:mod:`xnetspace.timm_models`) and the file loaders (:mod:`xnetspace.checkpoint`) use it. Key renames:
ARCHITECTURE.md, "The release's checkpoint layout".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from timm.models import clean_state_dict
from torch import Tensor

__all__ = ["CheckpointError", "convert_official_state_dict", "checkpoint_filter_fn"]

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

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or []


def _unwrap(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    """The state dict inside a release/timm file: bare, or under state_dict_ema/state_dict/model."""
    for key in _WRAPPER_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            return checkpoint[key]
    return checkpoint


def _rename(key: str) -> str | None:
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
        CheckpointError: keys that fit neither layout (all of them listed), or entries that are
            not a text key with a tensor (the first few named).
    """
    state_dict = dict(_unwrap(state_dict))
    odd = [
        f"{k!r} ({type(v).__name__})"
        for k, v in state_dict.items()
        if not (isinstance(k, str) and isinstance(v, Tensor))
    ]
    if odd:
        raise CheckpointError(
            f"{len(odd)} entries of the state dict are not a name with a tensor: "
            f"{', '.join(x[:100] for x in odd[:5])}{' ...' if len(odd) > 5 else ''}"
        )
    state_dict = clean_state_dict(state_dict)
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
