"""Inference form: every fused operator and the whole network compute the training form's
eval-mode function (relative error < 1e-4) with random norm statistics, affines and layer scales."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from xnetspace import build_model, load_preset
from xnetspace.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from xnetspace.model import TransXNet
from xnetspace.model.block import FusedStage, TransXNetBlock, TransXNetStage
from xnetspace.model.convs import LayerScale, conv_bn
from xnetspace.model.ffn import MSFFN
from xnetspace.model.folds import InferenceOnly, affine_then_conv, merge_depthwise
from xnetspace.model.idconv import IDConv
from xnetspace.model.mixer import DMixer, FusedSTE, SqueezedTokenEnhancer
from xnetspace.model.osra import OSRA

from .conftest import random_specs, tiny_spec

TOL = 1e-4


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).norm() / ref.norm()).item()


@torch.no_grad()
def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN/GN statistics and affines, layer scales, position biases and biases, in eval mode,
    so that every fold shows in the output (the init values, 1 and 0, would hide mistakes)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(t: torch.Tensor, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
        return offset + scale * torch.randn(t.shape, generator=gen)

    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(rand(m.running_mean, 0.2))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            m.weight.copy_(rand(m.weight, 0.3, 1.0))
            m.bias.copy_(rand(m.bias, 0.2))
        elif isinstance(m, LayerScale):
            m.weight.copy_(rand(m.weight, 0.5))
            m.bias.copy_(rand(m.bias, 0.1))
        elif isinstance(m, nn.Conv2d) and m.bias is not None:
            m.bias.copy_(rand(m.bias, 0.1))
        elif isinstance(m, TransXNetStage) and m.pos_bias is not None:
            m.pos_bias.copy_(rand(m.pos_bias))
    return module.eval()


def check_fused(module: nn.Module, *inputs, tol: float = TOL, **kwargs) -> nn.Module:
    """Fuse ``module`` and check the fused form against it; returns the fused module."""
    with torch.no_grad():
        ref = module(*inputs)
        fused = module.fuse(**kwargs)
        out = fused(*inputs)
    assert not fused.training
    assert out.shape == ref.shape and rel_err(out, ref) < tol, rel_err(out, ref)
    return fused


# -- per fused operator ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "act,kernel,stride,groups", [(False, 7, 4, 1), (False, 3, 2, 1), (True, 5, 2, 8), (True, 1, 1, 1)]
)
def test_conv_bn_folds(act, kernel, stride, groups):
    conv_bn_module = randomize(conv_bn(8, 8, kernel, act=act, stride=stride, padding=kernel // 2, groups=groups))
    fused = check_fused(conv_bn_module, torch.randn(2, 8, 17, 13))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())


@pytest.mark.parametrize("kernel_sizes", [(1, 3, 5, 7), (3,), (5, 9), (1, 7)])
@pytest.mark.parametrize("with_ls", [False, True])
def test_msffn_branches_and_identity_become_one_depthwise_conv(kernel_sizes, with_ls):
    ffn = randomize(MSFFN(12, 26, kernel_sizes), seed=1)
    ls = randomize(LayerScale(12), seed=2) if with_ls else None
    x = torch.randn(2, 12, 11, 9)
    with torch.no_grad():
        ref = ffn(x) if ls is None else ls(ffn(x))
        fused = ffn.fuse(ls)
        assert rel_err(fused(x), ref) < TOL
    assert fused.dwconv.kernel_size == (max(kernel_sizes),) * 2 and fused.dwconv.groups == 26
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())


def test_merged_depthwise_kernels_are_centred_zero_padded():
    convs = [nn.Conv2d(2, 2, k, padding=k // 2, groups=2) for k in (1, 3)]
    merged = merge_depthwise(convs, identity=True)
    assert merged.kernel_size == (3, 3) and merged.padding == (1, 1)
    small = torch.zeros(2, 3, 3)
    small[:, 1, 1] = convs[0].weight[:, 0, 0, 0] + 1  # the 1x1 tap and the identity, centred
    big = convs[1].weight[:, 0].detach().clone()
    big[:, 1, 1] += 1
    torch.testing.assert_close(merged.weight[:, 0], torch.cat([small, big]))
    torch.testing.assert_close(merged.bias, torch.cat([convs[0].bias, convs[1].bias]))
    with pytest.raises(ValueError, match="depthwise"):
        merge_depthwise([nn.Conv2d(2, 2, 3, padding=1)])


def test_affine_before_a_padded_conv_is_refused():
    with pytest.raises(ValueError, match="unpadded 1x1"):
        affine_then_conv(torch.ones(4), torch.zeros(4), nn.Conv2d(4, 4, 3, padding=1))


@pytest.mark.parametrize("with_ls", [False, True])
def test_ste_folds_its_three_norms_and_the_layer_scale(with_ls):
    ste = randomize(SqueezedTokenEnhancer(24, 16), seed=3)
    ls = randomize(LayerScale(24), seed=4) if with_ls else None
    x = torch.randn(2, 24, 9, 10)
    with torch.no_grad():
        ref = ste(x) if ls is None else ls(ste(x))
        assert rel_err(ste.fuse(ls)(x), ref) < TOL


@pytest.mark.parametrize("groups,kernel", [(2, 7), (4, 3)])
def test_idconv_runs_its_projection_once(groups, kernel):
    idconv = randomize(IDConv(16, kernel, groups), seed=5)
    fused = check_fused(idconv, torch.randn(3, 16, 15, 11))
    assert sum(isinstance(m, nn.Conv2d) for m in fused.modules()) == 2


@pytest.mark.parametrize("heads,sr_ratio,size", [(1, 1, (7, 7)), (2, 2, (14, 10)), (4, 3, (13, 16)), (2, 8, (24, 21))])
def test_osra_fuses_and_its_attention_paths_agree(heads, sr_ratio, size):
    osra = randomize(OSRA(16, heads, sr_ratio), seed=6)
    x = torch.randn(2, 16, *size)
    n, m = size[0] * size[1], osra.sr(x).shape[-2:].numel()
    pos_bias = torch.randn(1, heads, n, m)
    with torch.no_grad():
        ref = osra(x, pos_bias)
        fused = osra.fuse()
        outs = {}
        for mode in (None, True, False):  # auto (explicit on the CPU), SDPA, explicit
            fused.fused_attn = mode
            outs[mode] = fused(x, pos_bias)
            assert rel_err(outs[mode], ref) < 1e-5, (mode, rel_err(outs[mode], ref))
        fused.fused_attn = True
        assert rel_err(fused(x), osra(x)) < 1e-5  # no position bias
    assert rel_err(outs[True], outs[False]) < 1e-5
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())


@pytest.mark.parametrize("attn_dim,groups", [(0, 2), (8, 1), (16, 3), (32, 2)])
def test_dmixer_with_layer_scale_and_shortcut(attn_dim, groups):
    mixer = randomize(
        DMixer(
            32,
            attn_dim,
            idconv=dict(kernel_size=5, num_groups=groups),
            osra=dict(num_heads=2, sr_ratio=2),
            ste=dict(hidden_dim=16),
        ),
        seed=7,
    )
    ls = randomize(LayerScale(32), seed=8)
    x, shortcut = torch.randn(2, 32, 10, 12), torch.randn(2, 32, 10, 12)
    pos_bias = torch.randn(1, 2, 120, 30) if attn_dim else None
    with torch.no_grad():
        ref = shortcut + ls(mixer(x, pos_bias))
        assert rel_err(mixer.fuse(ls)(x, pos_bias, shortcut=shortcut), ref) < TOL
        assert rel_err(mixer.fuse()(x, pos_bias), mixer(x, pos_bias)) < TOL


@pytest.mark.parametrize("layer_scale", [1e-5, None])
def test_block_and_stage_fuse(layer_scale):
    spec = tiny_spec(layer_scale_init_value=layer_scale)
    stage = spec.stages[1]
    block = randomize(TransXNetBlock(stage, layer_scale_init_value=layer_scale), seed=9)
    x = torch.randn(2, 32, 12, 10)
    check_fused(block, x, torch.randn(1, 2, 120, 30))
    model = randomize(build_model(spec), seed=10)
    check_fused(model.stages[1], torch.randn(2, 16, 24, 20))  # downsample and a resized position bias


# -- whole networks ----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name,size", [("transxnet_t", (64, 64)), ("transxnet_s", (96, 80)), ("transxnet_b", (64, 48))])
def test_presets_end_to_end(name, size):
    model = randomize(build_model(name), seed=11)
    fused = copy.deepcopy(model).reparameterize()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref_last, ref_stages = model.forward_intermediates(x)
        last, stages = fused.forward_intermediates(x)
        for ours, ref in zip(stages, ref_stages):
            assert rel_err(ours, ref) < TOL
        logits, ref_logits = fused.forward_head(last), model.forward_head(ref_last)
    assert rel_err(logits, ref_logits) < TOL and ref_logits.std() > 0
    assert fused.is_reparameterized and not model.is_reparameterized
    assert not any(isinstance(m, (nn.BatchNorm2d, LayerScale)) for m in fused.modules())


def layout(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def test_the_fused_form_built_from_a_spec_has_the_reparameterised_layout():
    # Built directly (timm's inference_mode=True), the inference form holds exactly the keys and
    # shapes that reparameterize() gives, for specs over everything the spec allows.
    for spec in [tiny_spec(), tiny_spec(layer_scale_init_value=None), *random_specs(40, seed=32)]:
        direct = TransXNet(spec, form="fused")
        assert layout(direct) == layout(build_model(spec).reparameterize()), spec.model_dump_json()
        assert direct.is_reparameterized and not direct.training


@pytest.mark.parametrize("name", ["tiny", "transxnet_t"])
def test_a_reparameterised_checkpoint_loads_into_the_fused_form_built_directly(name, tmp_path):
    spec = tiny_spec() if name == "tiny" else load_preset(name)
    model = randomize(build_model(spec), seed=31)
    fused = copy.deepcopy(model).reparameterize()
    path = save_checkpoint(fused, tmp_path / "fused.pt")
    assert torch.load(path, weights_only=True)["form"] == "fused"
    rebuilt = load_checkpoint(path)  # the spec and form from the file, strictly loaded
    direct = TransXNet(spec, form="fused")
    direct.load_state_dict(fused.state_dict())  # strict
    assert all(isinstance(s, FusedStage) for s in rebuilt.stages) and rebuilt.is_reparameterized
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), fused(x), rtol=0, atol=0)
        torch.testing.assert_close(direct(x), fused(x), rtol=0, atol=0)
        assert rel_err(direct(x), model(x)) < TOL


def test_a_checkpoint_with_an_unknown_form_is_refused(tmp_path):
    path = save_checkpoint(build_model(tiny_spec()), tmp_path / "tiny.pt")
    raw = torch.load(path, weights_only=True)
    torch.save({**raw, "form": "quantized"}, path)
    with pytest.raises(CheckpointError, match="stores form 'quantized'; expected 'reference' or 'fused'"):
        load_checkpoint(path)


def test_forms_are_chosen_by_name_and_a_wrong_one_is_refused():
    spec = tiny_spec()
    assert TransXNet(spec, form="fast").train_form == "fast"
    assert TransXNet(spec).train_form == "reference" and not TransXNet(spec).is_reparameterized
    with pytest.raises(ValueError, match="form must be one of reference, fast, fused, got 'deploy'"):
        TransXNet(spec, form="deploy")
    with pytest.raises(RuntimeError, match="inference-only"):
        TransXNet(spec, form="fused").set_train_form("fast")


def test_a_fold_whose_layout_differs_from_the_direct_build_is_refused():
    fused = FusedSTE(8, 16, kernel_size=3)
    with pytest.raises(ValueError, match=r"FusedSTE.conv_dw: folded .*\(8, 1, 5, 5\).* but built .*\(8, 1, 3, 3\)"):
        fused.take(conv_dw=nn.Conv2d(8, 8, 5, padding=2, groups=8))
    wider = nn.Conv2d(8, 16, 1)
    assert fused.take(conv_reduce=wider).conv_reduce is wider  # the same layout is taken


def test_reparameterize_is_idempotent_and_matches_timms_walker():
    model = randomize(build_model(tiny_spec()), seed=12)
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        ref = model(x)
        walked = timm.utils.reparameterize_model(model)  # a deep copy, fused through fuse()
        fused = copy.deepcopy(model).reparameterize()
        keys = list(fused.state_dict())
        assert fused.reparameterize() is fused and list(fused.state_dict()) == keys
        torch.testing.assert_close(walked(x), fused(x), rtol=0, atol=0)
        assert rel_err(fused(x), ref) < TOL
    assert walked.is_reparameterized and not model.is_reparameterized


def test_deploy_form_runs_at_several_sizes_with_a_cached_position_bias():
    model = randomize(build_model(tiny_spec()), seed=13)
    fused = copy.deepcopy(model).reparameterize()
    stage = fused.stages[0]
    assert isinstance(stage, FusedStage)
    with torch.no_grad():
        for size in [(96, 80), (64, 64), (97, 131), (96, 80)]:
            x = torch.randn(1, 3, *size)
            assert rel_err(fused(x), model(x)) < TOL
        assert list(stage._pos_bias_cache) == [(24, 20), (16, 16), (25, 33)]
        first = stage.resized_pos_bias(24, 20)
        assert stage.resized_pos_bias(24, 20) is first  # computed once per size
        fused.double()  # moving the model clears the cache: no stale dtype
        assert not stage._pos_bias_cache
        x = torch.randn(1, 3, 96, 80, dtype=torch.float64)
        assert fused(x).dtype == torch.float64
        for i in range(FusedStage.max_cached_sizes + 3):
            stage.resized_pos_bias(8 + i, 8)
        assert len(stage._pos_bias_cache) == FusedStage.max_cached_sizes


def test_deploy_form_refuses_training_but_passes_gradients():
    model = randomize(build_model(tiny_spec()), seed=14)
    fused = copy.deepcopy(model).reparameterize()
    with pytest.raises(RuntimeError, match=r"re-parameterised .* cannot train"):
        fused.train()
    assert isinstance(fused.stages[0], InferenceOnly)
    fused.eval()
    x_ref, x = (
        torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(0)).requires_grad_() for _ in range(2)
    )
    model(x_ref).square().sum().backward()
    fused(x).square().sum().backward()  # input gradients (saliency) stay available
    assert rel_err(x.grad, x_ref.grad) < TOL


def test_channels_last_gives_the_same_outputs():
    model = randomize(build_model(tiny_spec()), seed=15)
    fused = copy.deepcopy(model).reparameterize()
    x = torch.randn(2, 3, 96, 80)
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x)
        assert rel_err(copy.deepcopy(model).to(memory_format=torch.channels_last)(xc), ref) < 1e-5
        assert rel_err(fused.to(memory_format=torch.channels_last)(xc), ref) < TOL


# -- compile and export (a tiny spec, a fixed input size) -------------------------------------------
@pytest.fixture(scope="module")
def tiny_pair():
    model = randomize(build_model(tiny_spec()), seed=16)
    return model, copy.deepcopy(model).reparameterize(), torch.randn(2, 3, 64, 64)


@pytest.mark.slow
@pytest.mark.parametrize("deploy", [False, True])
def test_dynamo_traces_both_forms_without_graph_breaks(tiny_pair, deploy):
    model, fused, x = tiny_pair
    with torch.no_grad():
        explanation = torch._dynamo.explain(fused if deploy else model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.slow
def test_compiled_deploy_form_matches_eager():
    # One stage holds every operator kind (IDConv, OSRA with OSR, STE, MS-FFN) and compiles fastest.
    model = randomize(build_model(tiny_spec(stages=[dict(depth=1, embed_dim=16, num_heads=2, sr_ratio=2)])), seed=17)
    fused = copy.deepcopy(model).reparameterize().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    torch._dynamo.reset()
    compiled = torch.compile(fused)
    with torch.no_grad():
        assert rel_err(compiled(x), model(x)) < TOL


def test_torch_export_of_the_deploy_form(tiny_pair):
    model, fused, x = tiny_pair
    program = torch.export.export(fused, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), fused(x), rtol=1e-5, atol=1e-6)
        assert rel_err(program.module()(x), model(x)) < TOL


def test_torchscript_of_the_deploy_form(tiny_pair):
    model, fused, x = tiny_pair
    scripted = torch.jit.script(fused)  # without the cache: it resizes the position bias each call
    with torch.no_grad():
        for size in [(64, 64), (97, 131)]:
            x = torch.randn(1, 3, *size)
            torch.testing.assert_close(scripted(x), fused(x), rtol=1e-5, atol=1e-6)
            assert rel_err(scripted(x), model(x)) < TOL


@pytest.mark.slow
def test_onnx_export_of_the_deploy_form(tiny_pair, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from onnx.reference import ReferenceEvaluator

    model, fused, x = tiny_pair
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(fused, (x,), path, dynamo=True, input_names=["image"], output_names=["logits"])
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    (out,) = ReferenceEvaluator(proto).run(None, {"image": x.numpy()})  # onnx's own interpreter
    with torch.no_grad():
        assert rel_err(torch.from_numpy(out), model(x)) < TOL


# -- gradient checkpointing (peak memory: benchmarks/bench_model.py --train) -------------------------
def test_checkpointing_replays_drop_path_and_dropout_exactly():
    spec = tiny_spec(drop_path_rate=0.3, drop_rate=0.2)
    model = build_model(spec).train()
    x = torch.randn(2, 3, 48, 48)
    results = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        torch.manual_seed(0)
        out = model(x)
        out.square().sum().backward()
        results.append((out, [p.grad.clone() for p in model.parameters()]))
    (plain, plain_grads), (ckpt, ckpt_grads) = results
    torch.testing.assert_close(ckpt, plain)
    for a, b in zip(ckpt_grads, plain_grads):
        torch.testing.assert_close(a, b)


def test_checkpointing_recomputes_every_block_in_backward():
    model = build_model(tiny_spec())
    calls = []
    for block in (b for s in model.stages for b in s.blocks):
        block.register_forward_pre_hook(lambda *_: calls.append(1))  # recompute may stop early
    n = sum(len(s.blocks) for s in model.stages)
    model.set_grad_checkpointing(True)
    out = model(torch.randn(2, 3, 48, 48))
    assert len(calls) == n
    out.sum().backward()
    assert len(calls) == 2 * n  # each block ran again instead of keeping its activations
