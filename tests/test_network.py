"""The builder: exact presets, any input size, every mixer share, and timm's model interface."""

from __future__ import annotations

import pytest
import torch

from xnetspace import build_model, load_preset
from xnetspace.model.idconv import IDConv
from xnetspace.model.osra import OSRA

from .conftest import tiny_spec

PAPER_PARAMS = {"transxnet_t": 12_834_808, "transxnet_s": 26_864_068, "transxnet_b": 48_009_002}


@pytest.mark.parametrize("name", PAPER_PARAMS)
def test_preset_parameter_counts_are_exact(name):
    model = build_model(name)
    assert sum(p.numel() for p in model.parameters()) == PAPER_PARAMS[name]


@pytest.mark.parametrize("size", [(224, 224), (96, 80), (97, 131), (33, 257), (50, 50), (1, 1)])
def test_forward_at_any_input_size(size):
    model = build_model(tiny_spec()).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = model(x)
        feats = model.forward_intermediates(x, intermediates_only=True)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    h, w = size
    for i, f in enumerate(feats):  # stem: ceil(/4), then ceil(/2) per stage
        h, w = (-(-h // 4), -(-w // 4)) if i == 0 else (-(-h // 2), -(-w // 2))
        assert f.shape == (2, model.feature_info[i]["num_chs"], h, w)


def test_position_bias_is_resized_bicubically_for_other_sizes():
    model = build_model(tiny_spec()).eval()
    stage = model.stages[0]
    with torch.no_grad():
        stage.pos_bias.normal_()
    assert stage.resized_pos_bias(56, 56) is stage.pos_bias  # base size: no resize
    resized = stage.resized_pos_bias(24, 20)  # r = 4: 6 x 5 keys
    expected = torch.nn.functional.interpolate(stage.pos_bias, size=(480, 30), mode="bicubic", align_corners=False)
    assert torch.equal(resized, expected)


@pytest.mark.parametrize("attn_ratio", [0.0, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("groups", [1, 2])
def test_attention_shares_and_static_idconv_build_train_and_run(attn_ratio, groups):
    stage = dict(depth=1, embed_dim=32, num_heads=2, sr_ratio=2, idconv_groups=groups, attn_ratio=attn_ratio)
    spec = tiny_spec(stages=[stage, dict(stage, embed_dim=64, sr_ratio=1)])
    model = build_model(spec)
    mixer = model.stages[0].blocks[0].mixer
    assert (mixer.osra is None) == (attn_ratio == 0)
    assert (mixer.idconv is None) == (attn_ratio == 1)
    if mixer.idconv is not None:
        assert isinstance(mixer.idconv, IDConv) == (groups > 1)
    assert (model.stages[0].pos_bias is None) == (attn_ratio == 0)
    out = model(torch.randn(2, 3, 64, 48))
    out.sum().backward()
    assert out.shape == (2, 10)
    assert all(p.grad is not None for p in model.parameters()), "a parameter gets no gradient"


def test_mixer_split_sends_first_channels_to_idconv_and_last_to_osra():
    spec = tiny_spec(stages=[dict(depth=1, embed_dim=32, num_heads=2, attn_ratio=0.25)])
    mixer = build_model(spec).stages[0].blocks[0].mixer
    assert mixer.split == (24, 8)
    assert mixer.idconv.weight.shape == (2, 24, 7, 7) and mixer.osra.q.in_channels == 8


def test_idconv_with_equal_groups_is_the_shared_static_kernel():
    # With every bank equal, the softmax mixture gives that bank back: a plain depthwise conv.
    idconv = IDConv(8, kernel_size=3, num_groups=3).eval()
    with torch.no_grad():
        idconv.weight.copy_(idconv.weight[:1].expand_as(idconv.weight))
        idconv.bias.copy_(idconv.bias[:1].expand_as(idconv.bias))
    x = torch.randn(2, 8, 9, 11)
    expected = torch.nn.functional.conv2d(x, idconv.weight[0].unsqueeze(1), idconv.bias[0], padding=1, groups=8)
    torch.testing.assert_close(idconv(x), expected, rtol=1e-5, atol=1e-6)


def test_osra_heads_split_channels_head_major():
    osra = OSRA(8, num_heads=2, sr_ratio=1).eval()
    x = torch.randn(1, 8, 4, 4)
    ref = osra(x)
    with torch.no_grad():  # zeroing head 1's values (channels 4..7) must only zero output channels 4..7
        osra.kv.weight[8 + 4 :] = 0
        osra.kv.bias[8 + 4 :] = 0
    out = osra(x)
    torch.testing.assert_close(out[:, :4], ref[:, :4])
    assert out[:, 4:].abs().max() == 0


def test_initialisation_follows_the_release():
    model = build_model(tiny_spec(layer_scale_init_value=1e-4))
    block = model.stages[1].blocks[0]
    assert torch.all(block.layer_scale1.weight == 1e-4) and torch.all(block.layer_scale2.bias == 0)
    assert torch.all(model.stages[1].pos_bias == 0)
    assert torch.all(block.dpe.bias == 0) and 0.01 < block.dpe.weight.std() < 0.03
    assert 0.015 < block.mixer.idconv.weight.std() < 0.025  # truncated normal, std 0.02
    assert torch.all(block.norm1.weight == 1) and torch.all(block.ffn.norm.bias == 0)
    assert model.head.fc.bias.abs().sum() == 0


def test_drop_path_rises_linearly_to_the_rate():
    model = build_model("transxnet_t", drop_path_rate=0.3)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for s in model.stages for b in s.blocks]
    assert len(rates) == 18 and rates[0] == 0.0
    assert rates[-1] == pytest.approx(0.3) and rates[9] == pytest.approx(0.3 * 9 / 17)


def test_timm_interface():
    model = build_model(tiny_spec()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 64, 2, 2)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, 64)
        torch.testing.assert_close(model.forward_head(feats), model.get_classifier()(pre))
        last, inter = model.forward_intermediates(x, indices=2)
        assert [f.shape[1] for f in inter] == [48, 64] and torch.equal(last, feats)
        model.reset_classifier(5)
        assert model(x).shape == (2, 5) and model.num_classes == 5
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pre)  # norm and pooling stay: pooled pre-logits


def test_prune_intermediate_layers_keeps_what_the_taps_need():
    model = build_model(tiny_spec()).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        full = model.forward_intermediates(x, intermediates_only=True)
        assert model.prune_intermediate_layers(indices=[0, 1]) == [0, 1]
        assert len(model.stages) == 2 and model.num_features == 32
        pruned = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        assert model(x).shape == (1, 32, 8, 8)  # no norm, pool or classifier after the last kept stage
    for a, b in zip(pruned, full[:2]):
        torch.testing.assert_close(a, b)


def test_num_classes_zero_returns_pooled_prelogits():
    model = build_model(tiny_spec(), num_classes=0).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 64)


def test_gradient_checkpointing_gives_the_same_results():
    torch.manual_seed(0)
    model = build_model(tiny_spec())
    x = torch.randn(2, 3, 48, 48)
    plain = model(x)
    plain.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    assert all(s.grad_checkpointing for s in model.stages)
    torch.manual_seed(0)
    ckpt = model(x)
    ckpt.sum().backward()
    torch.testing.assert_close(ckpt, plain)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g)


def test_invalid_overrides_never_reach_torch():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="num_classes"):
        build_model("transxnet_t", num_classes=-3)
    with pytest.raises(ValidationError, match="img_size"):
        build_model("transxnet_t", img_size=256)


def test_preset_spec_is_kept_on_the_model():
    model = build_model("transxnet_s", num_classes=7)
    assert model.spec.name == "transxnet_s" and model.spec.num_classes == 7
    assert model.spec.stages == load_preset("transxnet_s").stages
