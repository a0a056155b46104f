"""timm registrations: the paper's ``transxnet_t``/``_s``/``_b`` and ``transxnet`` for any spec.

Importing :mod:`xnetspace` imports this module, which registers the four names with timm, so
``timm.create_model`` (and timm's ``train.py``, ``validate.py``, ``inference.py``) build them with
every timm keyword: ``num_classes``, ``in_chans``, ``drop_rate``, ``drop_path_rate``,
``global_pool``, ``features_only`` (with ``out_indices`` and ``feature_cls`` ``"list"``, the
default, ``"getter"`` or ``"fx"``), ``pretrained=True`` with ``pretrained_cfg_overlay=dict(file=...)``
for a local release checkpoint or one saved by :func:`xnetspace.checkpoint.save_checkpoint`.

Paper: arXiv 2310.19380 (Tables I/II); weights: github.com/LMMMEng/TransXNet releases.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .model import TransXNet
from .release import checkpoint_filter_fn
from .spec import NetworkSpec, load_preset, resolve_spec

__all__ = ["default_cfgs", "transxnet", "transxnet_t", "transxnet_s", "transxnet_b"]

RELEASE_URL = "https://github.com/LMMMEng/TransXNet/releases/download/v1.0/"


def _cfg(url: str = "", **kwargs: Any) -> dict:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv",
        "classifier": "head.fc",
        "paper_ids": "arXiv:2310.19380",
        "paper_name": "TransXNet: Learning Both Global and Local Dynamics with a Dual Dynamic Token Mixer",
        "origin_url": "https://github.com/LMMMEng/TransXNet",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "transxnet_t.in1k": _cfg(url=RELEASE_URL + "transx-t.pth.tar", crop_pct=0.9),
        "transxnet_s.in1k": _cfg(url=RELEASE_URL + "transx-s.pth.tar", crop_pct=0.9),
        "transxnet_b.in1k": _cfg(url=RELEASE_URL + "transx-b.pth.tar", crop_pct=0.95),
        "transxnet": _cfg(),  # no weights of its own: the spec's figures replace these per call
    }
)


def _create_transxnet(variant: str, spec: NetworkSpec, pretrained: bool = False, **kwargs: Any) -> TransXNet:
    out_indices = kwargs.pop("out_indices", tuple(range(spec.num_stages)))
    if variant == "transxnet":
        # The cfg describes the weights a file would hold: the spec as given (timm then replaces
        # the head when num_classes differs, and adapts the stem when in_chans differs).
        h, w = spec.stage_sizes(spec.image_size)[-1]
        overlay = dict(
            num_classes=spec.num_classes, input_size=(spec.in_chans, spec.image_size, spec.image_size), pool_size=(h, w)
        )
        kwargs["pretrained_cfg_overlay"] = {**overlay, **(kwargs.get("pretrained_cfg_overlay") or {})}
    return build_model_with_cfg(
        TransXNet,
        variant,
        pretrained,
        spec=spec,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


@register_model
def transxnet(
    pretrained: bool = False, spec: NetworkSpec | Mapping[str, Any] | str | Path = "transxnet_t", **kwargs: Any
) -> TransXNet:
    """Any spec as a timm model: ``timm.create_model("transxnet", spec=SPEC, **timm_kwargs)``.

    ``spec``: a spec file path (e.g. a search's ``best_spec.yaml``), a preset name, a mapping of
    spec fields or a NetworkSpec; without one, TransXNet-T (timm builds every registered name
    with no arguments). The pretrained cfg follows the spec (``num_classes``, ``input_size`` =
    (in_chans, image_size, image_size)); there are no weights to download, so ``pretrained=True``
    needs ``pretrained_cfg_overlay=dict(file=PATH)`` (a release checkpoint, or one saved by
    ``save_checkpoint`` for this spec). From the command line:
    ``python train.py DATA --model transxnet --model-kwargs spec=best_spec.yaml``.

    Raises:
        xnetspace.spec.SpecError: unknown preset or unreadable/invalid spec file.
        pydantic.ValidationError: an invalid spec mapping or keyword (e.g. ``num_classes=-1``).
    """
    return _create_transxnet("transxnet", resolve_spec(spec), pretrained, **kwargs)


@register_model
def transxnet_t(pretrained: bool = False, **kwargs: Any) -> TransXNet:
    """TransXNet-T: 12.8 M params, 1.8 GFLOPs, 81.6 top-1 (paper Table I/II)."""
    return _create_transxnet("transxnet_t", load_preset("transxnet_t"), pretrained, **kwargs)


@register_model
def transxnet_s(pretrained: bool = False, **kwargs: Any) -> TransXNet:
    """TransXNet-S: 26.9 M params, 4.5 GFLOPs, 83.8 top-1 (paper Table I/II)."""
    return _create_transxnet("transxnet_s", load_preset("transxnet_s"), pretrained, **kwargs)


@register_model
def transxnet_b(pretrained: bool = False, **kwargs: Any) -> TransXNet:
    """TransXNet-B: 48.0 M params, 8.3 GFLOPs, 84.6 top-1 (paper Table I/II)."""
    return _create_transxnet("transxnet_b", load_preset("transxnet_b"), pretrained, **kwargs)
