"""timm registrations: create_model, default cfgs, features_only, local release weights."""
from __future__ import annotations

import pytest
import timm
import torch

import xnetspace  # noqa: F401 - registers the models

from .conftest import release_state_dict

RELEASE = "https://github.com/LMMMEng/TransXNet/releases/download/v1.0/"


@pytest.mark.parametrize("name,crop,params", [("transxnet_t", 0.9, 12_834_808), ("transxnet_s", 0.9, 26_864_068),
                                              ("transxnet_b", 0.95, 48_009_002)])
def test_create_model_and_default_cfg(name, crop, params):
    model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == params
    cfg = model.pretrained_cfg
    assert cfg["url"] == RELEASE + f"transx-{name[-1]}.pth.tar"
    assert cfg["crop_pct"] == crop and cfg["interpolation"] == "bicubic"
    assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and cfg["classifier"] == "head.fc"
    assert name in timm.list_models("transxnet*")


def test_create_model_kwargs_reach_the_spec():
    model = timm.create_model("transxnet_t", num_classes=10, drop_path_rate=0.2, in_chans=1)
    assert model.spec.num_classes == 10 and model.spec.drop_path_rate == 0.2 and model.spec.in_chans == 1
    assert model.stages[3].blocks[2].drop_path.drop_prob == pytest.approx(0.2)
    assert model.eval()(torch.randn(1, 1, 64, 64)).shape == (1, 10)


def test_features_only_returns_the_four_stage_maps():
    model = timm.create_model("transxnet_t", features_only=True).eval()
    assert model.feature_info.channels() == [48, 96, 224, 448]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 96, 128))
    assert [tuple(f.shape) for f in feats] == [(1, 48, 24, 32), (1, 96, 12, 16), (1, 224, 6, 8), (1, 448, 3, 4)]
    subset = timm.create_model("transxnet_t", features_only=True, out_indices=(1, 3))
    assert subset.feature_info.channels() == [96, 448]


def test_local_release_checkpoint_loads_through_the_converter(tmp_path):
    release = release_state_dict("t", seed=1)
    path = tmp_path / "transx-t.pth.tar"
    torch.save({"state_dict": release}, path)
    model = timm.create_model("transxnet_t", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(model.stages[2].blocks[4].mixer.osra.q.weight,
                               release["network.4.4.token_mixer.global_unit.q.weight"])
    torch.testing.assert_close(model.head.fc.weight, release["classifier.2.weight"].flatten(1))
    # A new head: timm drops the classifier and keeps the rest.
    model = timm.create_model("transxnet_t", pretrained=True, num_classes=5, pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(model.stem.conv.weight, release["patch_embed.proj.conv.weight"])
    assert model.head.fc.weight.shape == (5, 448)
