"""The presets' evaluation preprocessing and a real photograph to run a network on (``xnetspace build``).

Preprocessing for the presets is timm's (``timm.data.create_transform``) with each preset's
default cfg (crop pct 0.9 for T/S, 0.95 for B, bicubic, ImageNet mean/std: the release's
evaluation, paper section IV-A; :mod:`xnetspace.timm_models`). The photograph is scikit-image's
bundled ``chelsea`` (a cat), so nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from timm.data import create_transform
from timm.models import get_pretrained_cfg

from .spec import NetworkSpec

__all__ = ["DEFAULT_PHOTO", "eval_data_config", "eval_transform", "load_photo", "photo_batch"]

DEFAULT_PHOTO = "skimage.data.chelsea"  # a real photograph of a cat, bundled with scikit-image


def eval_data_config(spec: NetworkSpec, image_size: tuple[int, int]) -> dict:
    """timm data config for ``spec``: its preset's cfg when it has one (by ``spec.name``), else
    the T/S defaults; ``input_size`` is (in_chans, H, W)."""
    cfg = get_pretrained_cfg(spec.name) if spec.name.startswith("transxnet_") else None
    cfg = cfg or get_pretrained_cfg("transxnet_t")
    assert cfg is not None  # transxnet_t is registered (xnetspace.timm_models)
    mean, std = cfg.mean, cfg.std
    if spec.in_chans == 1:  # a grey photograph: one channel with the average statistics
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    return dict(
        input_size=(spec.in_chans, *image_size),
        interpolation=cfg.interpolation,
        mean=mean,
        std=std,
        crop_pct=cfg.crop_pct,
    )


def eval_transform(spec: NetworkSpec, image_size: tuple[int, int]):
    """PIL image -> (in_chans, H, W) float tensor: resize, center crop, normalise (timm)."""
    return create_transform(**eval_data_config(spec, image_size), is_training=False)


def load_photo(path: str | Path | None = None, in_chans: int = 3) -> Image.Image:
    """The image at ``path``, or scikit-image's bundled photograph; RGB, or grey for 1 channel.

    Raises:
        ValueError: ``in_chans`` other than 1 or 3, or a file that is not an image.
        FileNotFoundError: no file at ``path``.
    """
    if in_chans not in (1, 3):
        raise ValueError(f"a photograph gives 1 or 3 channels; the spec has in_chans {in_chans}")
    if path is None:
        from skimage import data

        image = Image.fromarray(data.chelsea())
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no image file at {str(path)!r}")
        try:
            image = Image.open(path)
            image.load()
        except Exception as err:  # PIL raises several kinds for unreadable files (re-raised as one)
            raise ValueError(f"{path} is not a readable image: {err}") from err
    return image.convert("L" if in_chans == 1 else "RGB")


def photo_batch(spec: NetworkSpec, image_size: tuple[int, int], path: str | Path | None = None) -> torch.Tensor:
    """One preprocessed photograph as a (1, in_chans, H, W) batch."""
    return eval_transform(spec, image_size)(load_photo(path, spec.in_chans)).unsqueeze(0)
