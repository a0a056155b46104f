"""timm registrations: create_model, default cfgs, features_only, local release weights, and the
behaviours timm's own tests/test_models.py checks (scripting, FX, feature classes, generic entry)."""

from __future__ import annotations

import pytest
import timm
import torch

import xnetspace  # registers the models

from .conftest import release_state_dict, tiny_spec

RELEASE = "https://github.com/LMMMEng/TransXNet/releases/download/v1.0/"


@pytest.mark.parametrize(
    "name,crop,params",
    [("transxnet_t", 0.9, 12_834_808), ("transxnet_s", 0.9, 26_864_068), ("transxnet_b", 0.95, 48_009_002)],
)
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
    torch.testing.assert_close(
        model.stages[2].blocks[4].mixer.osra.q.weight, release["network.4.4.token_mixer.global_unit.q.weight"]
    )
    torch.testing.assert_close(model.head.fc.weight, release["classifier.2.weight"].flatten(1))
    # A new head: timm drops the classifier and keeps the rest.
    model = timm.create_model(
        "transxnet_t", pretrained=True, num_classes=5, pretrained_cfg_overlay=dict(file=str(path))
    )
    torch.testing.assert_close(model.stem.conv.weight, release["patch_embed.proj.conv.weight"])
    assert model.head.fc.weight.shape == (5, 448)


# -- timm conformance (issue 11): the behaviours timm's own tests/test_models.py checks -------------
ODD = (1, 3, 45, 61)  # an input size no stage divides evenly


def tiny_model(**kwargs):
    return timm.create_model("transxnet", spec=tiny_spec(), **kwargs)


def test_global_pool_and_num_classes_at_construction():
    model = timm.create_model("transxnet_t", num_classes=0, global_pool="").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 448, 2, 3)  # the normed last map
    model = tiny_model(num_classes=7, global_pool="max").eval()
    x = torch.randn(*ODD)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(pooled, model.head.norm(model.forward_features(x)).amax(dim=(2, 3)))
        assert model(x).shape == (1, 7)
    with pytest.raises(ValueError, match=r"global_pool=''.*num_classes=0"):
        tiny_model(global_pool="")  # a linear head cannot follow an unpooled map


def test_reset_classifier_to_features_and_back():
    model = tiny_model().eval()
    x = torch.randn(*ODD)
    model.reset_classifier(0, "")
    with torch.no_grad():
        assert model(x).shape == (1, 64, 2, 2)
    with pytest.raises(ValueError, match="pooled head"):
        model.reset_classifier(3)
    model.reset_classifier(3, "avg")
    with torch.no_grad():
        assert model(x).shape == (1, 3) and model.num_classes == 3


@pytest.mark.slow
@pytest.mark.parametrize("name,size", [("tiny", ODD), ("transxnet_t", (1, 3, 70, 90))])
def test_torchscript_matches_eager(name, size):
    with timm.layers.set_layer_config(scriptable=True):
        model = (tiny_model() if name == "tiny" else timm.create_model(name)).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(*size)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=0)


@pytest.mark.slow
def test_fx_feature_extractor_matches_eager_and_scripts():
    from torchvision.models.feature_extraction import create_feature_extractor

    model = tiny_model().eval()
    x = torch.randn(*ODD)
    extractor = create_feature_extractor(model, return_nodes={"stages.1": "mid", "head.fc": "logits"})
    with torch.no_grad():
        out = extractor(x)
        torch.testing.assert_close(out["logits"], model(x), rtol=0, atol=0)
        torch.testing.assert_close(out["mid"], model.stages[:2](model.stem(x)), rtol=0, atol=0)
        torch.testing.assert_close(torch.jit.script(extractor)(x)["logits"], out["logits"])


def test_fx_graph_trains_every_parameter():
    from torchvision.models.feature_extraction import create_feature_extractor

    model = tiny_model(num_classes=42).train()
    extractor = create_feature_extractor(model, return_nodes=["head.fc"])
    out = extractor(torch.randn(2, 3, 45, 61))["head.fc"]
    out.mean().backward()
    missing = [n for n, p in extractor.named_parameters() if p.grad is None]
    assert out.shape == (2, 42) and not missing
    assert sum(p.numel() for p in extractor.parameters()) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("feature_cls", [None, "getter", "fx"])
def test_features_only_feature_classes_agree(feature_cls):
    kwargs = {} if feature_cls is None else dict(feature_cls=feature_cls)
    torch.manual_seed(0)
    model = tiny_model(features_only=True, out_indices=(0, 2, 3), **kwargs).eval()
    torch.manual_seed(0)  # the same initial weights, so the maps can be compared
    reference = tiny_model().eval()
    x = torch.randn(*ODD)
    with torch.no_grad():
        feats = model(x)
        _, expected = reference.forward_intermediates(x, indices=[0, 2, 3])
    assert model.feature_info.channels() == [16, 48, 64] and model.feature_info.reduction() == [4, 16, 32]
    assert [tuple(f.shape) for f in feats] == [(1, 16, 12, 16), (1, 48, 3, 4), (1, 64, 2, 2)]
    for f, e in zip(feats, expected):
        torch.testing.assert_close(f, e)


def test_forward_intermediates_indices_and_stop_early():
    model = tiny_model().eval()
    x = torch.randn(*ODD)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, indices=2)  # the last two stages
        assert [m.shape[1] for m in maps] == [48, 64]
        torch.testing.assert_close(final, model.forward_features(x))
        early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
        assert len(early) == 1 and early[0].shape == (1, 32, 6, 8)
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")


def test_generic_entry_takes_every_spec_form(tmp_path):
    spec = tiny_spec()
    path = tmp_path / "best_spec.yaml"
    xnetspace.save_spec(spec, path)
    params = sum(p.numel() for p in xnetspace.build_model(spec).parameters())
    for form in (spec, spec.model_dump(), str(path), path):
        model = timm.create_model("transxnet", spec=form)
        assert model.spec.digest() == spec.digest() and sum(p.numel() for p in model.parameters()) == params
    assert timm.create_model("transxnet", spec="transxnet_s").spec.embed_dims == (64, 128, 320, 512)
    assert timm.create_model("transxnet").spec.name == "transxnet_t"  # timm builds every name bare
    # The pretrained cfg follows the spec: timm's data pipeline and head logic read it.
    cfg = timm.create_model("transxnet", spec=spec.model_copy(update=dict(image_size=96))).pretrained_cfg
    assert cfg["num_classes"] == 10 and cfg["input_size"] == (3, 96, 96) and cfg["pool_size"] == (3, 3)
    with pytest.raises(xnetspace.SpecError):
        timm.create_model("transxnet", spec="no_such_preset")


def test_generic_entry_timm_kwargs():
    model = tiny_model(num_classes=3, in_chans=1, drop_path_rate=0.3, drop_rate=0.1, global_pool="avgmax").eval()
    assert (model.spec.num_classes, model.spec.in_chans, model.spec.drop_path_rate) == (3, 1, 0.3)
    assert model.stages[3].blocks[0].drop_path.drop_prob == pytest.approx(0.3)  # the last block: the full rate
    assert model.spec.drop_rate == 0.1 and model.head.global_pool.pool_type == "avgmax"
    with torch.no_grad():
        assert model(torch.randn(2, 1, 45, 61)).shape == (2, 3)


def test_generic_entry_loads_our_own_checkpoint(tmp_path):
    trained = xnetspace.build_model(tiny_spec()).eval()
    path = xnetspace.save_checkpoint(trained, tmp_path / "net.pt")
    loaded = tiny_model(pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(*ODD)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trained(x), rtol=0, atol=0)
    # A new head for another dataset keeps every other weight; one input channel folds the stem.
    new = tiny_model(pretrained=True, num_classes=4, in_chans=1, pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(
        new.stages[3].blocks[0].mixer.osra.q.weight, trained.stages[3].blocks[0].mixer.osra.q.weight
    )
    torch.testing.assert_close(new.stem.conv.weight, trained.stem.conv.weight.sum(dim=1, keepdim=True))
    assert new.head.fc.weight.shape == (4, 64)


def test_generic_entry_loads_a_release_checkpoint(tmp_path):
    release = release_state_dict("t", seed=2)
    path = tmp_path / "transx-t.pth.tar"
    torch.save({"state_dict": release}, path)
    model = timm.create_model(
        "transxnet",
        spec="transxnet_t",
        pretrained=True,
        features_only=True,
        out_indices=(3,),
        pretrained_cfg_overlay=dict(file=str(path)),
    )
    assert model.feature_info.channels() == [448]
    torch.testing.assert_close(model.stages_3.blocks[2].ffn.fc1.weight, release["network.6.2.mlp.fc1.0.weight"])


def test_build_prints_imagenet_class_names_for_1000_classes():
    from timm.data import ImageNetInfo
    from typer.testing import CliRunner

    from xnetspace.cli import app

    result = CliRunner().invoke(app, ["build", "transxnet_t", "--image-size", "64"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "top-" in line]
    names = ImageNetInfo()
    assert len(lines) == 5
    for line in lines:
        index = int(line.split("class")[1].split()[0])
        assert line.rstrip().endswith(names.index_to_description(index))
