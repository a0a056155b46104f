"""Fast training form: the same function as the reference form in train mode (outputs and
gradients), the same parameters and keys, switchable both ways; and the trainer's batching."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xnetspace import build_model
from xnetspace.model.block import TransXNetBlock
from xnetspace.model.convs import LayerScale
from xnetspace.model.ffn import MSFFN
from xnetspace.model.idconv import IDConv
from xnetspace.model.kernels import adaptive_avg_pool, depthwise, depthwise_same, per_sample_depthwise, pointwise
from xnetspace.model.osra import OSRA
from xnetspace.search.data import load_dataset
from xnetspace.search.train import TensorBatches, TrainConfig, train_candidate

from .conftest import random_specs, tiny_spec
from .test_deploy import randomize, rel_err

TOL = 1e-5  # float32 rounding of a differently ordered sum


def set_fast(module: nn.Module, fast: bool) -> nn.Module:
    for m in module.modules():
        if hasattr(m, "fast"):
            m.fast = fast
    return module


def outputs_and_grads(module: nn.Module, *inputs: torch.Tensor, fast: bool):
    """Train-mode output and the gradients of every parameter and input for a fixed random
    upstream gradient, with ``module`` in the given form (its BN statistics restored after)."""
    module = set_fast(copy.deepcopy(module), fast).train()
    inputs = [x.clone().requires_grad_(True) for x in inputs]
    out = module(*inputs)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
    grads = {name: p.grad for name, p in module.named_parameters()}
    grads.update({f"input{i}": x.grad for i, x in enumerate(inputs)})
    return out.detach(), grads


def check_same_function(module: nn.Module, *inputs: torch.Tensor, tol: float = TOL) -> None:
    ref, ref_grads = outputs_and_grads(module, *inputs, fast=False)
    out, grads = outputs_and_grads(module, *inputs, fast=True)
    assert out.shape == ref.shape and rel_err(out, ref) < tol, rel_err(out, ref)
    assert grads.keys() == ref_grads.keys()
    # Relative to the largest gradient: some are exactly zero in exact arithmetic (a bias before a
    # train-mode BN), and their float rounding has no scale of its own.
    scale = max(g.abs().max().item() for g in ref_grads.values() if g is not None)
    for name, grad in ref_grads.items():
        if grad is None:
            assert grads[name] is None, name
        else:
            err = (grads[name] - grad).abs().max().item() / scale
            assert err < tol, (name, err)


# -- per operator ----------------------------------------------------------------------------------
def test_layer_scale_as_multiply_add():
    check_same_function(randomize(LayerScale(12)), torch.randn(3, 12, 5, 7))


@pytest.mark.parametrize("kernel_sizes", [(1, 3, 5, 7), (3,), (1, 5), (3, 5, 9)])
def test_msffn_branches_and_identity_merged_every_step(kernel_sizes):
    check_same_function(randomize(MSFFN(12, 26, kernel_sizes)), torch.randn(3, 12, 7, 5))


@pytest.mark.parametrize("heads,sr_ratio,size", [(1, 1, (4, 4)), (2, 2, (7, 5)), (4, 4, (9, 11))])
def test_osra_residual_kernel_and_bmm_attention(heads, sr_ratio, size):
    osra = randomize(OSRA(16, heads, sr_ratio))
    x = torch.randn(3, 16, *size)
    m = ((size[0] - 1) // sr_ratio + 1) * ((size[1] - 1) // sr_ratio + 1)
    check_same_function(osra, x, torch.randn(1, heads, size[0] * size[1], m))


# -- the shared kernels' paths (batches of 8 or more take the matmuls) -------------------------------
def layouts(x: torch.Tensor):
    """NCHW, a channel slice of a wider map (the D-Mixer's split) and channels_last."""
    wide = torch.cat([x, x[:, :2]], dim=1)
    return {"nchw": x, "slice": wide[:, : x.shape[1]], "channels_last": x.contiguous(memory_format=torch.channels_last)}


def check_against_conv(fn, conv, x, *params):
    ref = conv(x, *params)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=ref.dtype)
    ref_grads = torch.autograd.grad(ref, params, grad)
    for name, view in layouts(x.detach()).items():
        view.requires_grad_(True)
        out = fn(view, *params)
        grads = torch.autograd.grad(out, (view, *params), grad)
        assert out.shape == ref.shape and rel_err(out, ref) < 1e-12, name
        # NCHW in, NCHW out: the CPU's training layout, which the next fast path and BN want
        assert out.is_contiguous() or name == "channels_last", name
        x_grad = torch.autograd.grad(conv(view, *params), view, grad)[0]
        assert rel_err(grads[0], x_grad) < 1e-12, name
        assert all(rel_err(g, r) < 1e-12 for g, r in zip(grads[1:], ref_grads)), name


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (4, 4), (5, 3), (8, 8), (15, 15)])
@pytest.mark.parametrize("kernel", [3, 7])
def test_depthwise_same_is_the_conv(size, kernel):
    """Batch 9: the gathered matrices on small maps (15x15 is over the bound for both kernels)."""
    x, weight, bias = random_double((9, 5, *size), (5, 1, kernel, kernel), (5,))
    check_against_conv(
        lambda v, w, b: depthwise_same(v, w, b, 5),
        lambda v, w, b: F.conv2d(v, w, b, padding=kernel // 2, groups=5),
        x,
        weight,
        bias,
    )


@pytest.mark.parametrize(
    "size,sr_ratio", [((8, 8), 8), ((8, 8), 4), ((4, 4), 2), ((5, 3), 2), ((2, 2), 2), ((9, 9), 1)]
)
def test_depthwise_strided_is_the_conv(size, sr_ratio):
    """OSRA's spatial reduction (kernel r + 3, stride r, padding (r + 3) // 2) and its depthwise
    1x1 (r = 1 here: a multiply), batch 9."""
    k = sr_ratio + 3 if sr_ratio > 1 else 1
    stride, padding = sr_ratio, k // 2
    x, weight, bias = random_double((9, 5, *size), (5, 1, k, k), (5,))
    check_against_conv(
        lambda v, w, b: depthwise(v, w, b, stride, padding),
        lambda v, w, b: F.conv2d(v, w, b, stride=stride, padding=padding, groups=5),
        x,
        weight,
        bias,
    )


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (5, 3), (8, 8)])
def test_pointwise_is_the_conv(size):
    x, weight, bias = random_double((9, 5, *size), (7, 5, 1, 1), (7,))
    check_against_conv(pointwise, F.conv2d, x, weight, bias)


# -- IDConv's per-sample kernels (paper eq. 3) -------------------------------------------------------
def grouped_conv(x, weight, bias):
    """The release's computation: the batch folded into the channels, one grouped conv."""
    B, C, H, W = x.shape
    K = weight.shape[-1]
    out = F.conv2d(
        x.reshape(1, B * C, H, W), weight.reshape(B * C, 1, K, K), bias.flatten(), padding=K // 2, groups=B * C
    )
    return out.reshape(B, C, H, W)


def random_double(*shapes, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True) for shape in shapes]


@pytest.mark.parametrize("batch", [1, 9])
@pytest.mark.parametrize("size", [(1, 1), (1, 4), (2, 2), (4, 4), (5, 3), (8, 8)])
@pytest.mark.parametrize("kernel", [3, 7])
def test_per_sample_depthwise_is_the_grouped_conv(batch, size, kernel):
    """Every path (a multiply-add on 1x1 maps, cropped kernels, the CPU's backward of two forward
    convs) against the release's grouped conv in float64: output and all three gradients."""
    x, weight, bias, grad = random_double((batch, 5, *size), (batch, 5, kernel, kernel), (batch, 5), (batch, 5, *size))
    ref = grouped_conv(x, weight, bias)
    ref_grads = torch.autograd.grad(ref, (x, weight, bias), grad)
    out = per_sample_depthwise(x, weight, bias)
    grads = torch.autograd.grad(out, (x, weight, bias), grad)
    assert out.shape == ref.shape and rel_err(out, ref) < 1e-12
    for name, g, r in zip(("x", "weight", "bias"), grads, ref_grads):
        assert g.shape == r.shape and rel_err(g, r) < 1e-12, name


def test_per_sample_depthwise_under_vmap_is_each_replicas_own():
    """Packs (xnetspace/pack.py) run it under torch.func.vmap: the same outputs and gradients as
    one replica at a time."""
    x, weight, bias, grad = random_double((3, 4, 6, 5, 5), (3, 4, 6, 7, 7), (3, 4, 6), (3, 4, 6, 5, 5))
    out = torch.func.vmap(per_sample_depthwise)(x, weight, bias)
    grads = torch.autograd.grad(out, (x, weight, bias), grad)
    ref = torch.stack([grouped_conv(x[i], weight[i], bias[i]) for i in range(3)])
    ref_grads = torch.autograd.grad(ref, (x, weight, bias), grad)
    assert rel_err(out, ref) < 1e-12
    assert all(rel_err(g, r) < 1e-12 for g, r in zip(grads, ref_grads))


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (3, 5), (7, 7), (9, 9), (13, 11)])
def test_adaptive_avg_pool_as_a_matmul(size):
    """Upsampling (windows of one or two pixels), equal and downsampling sizes; past 8 K^2 pixels
    (13x11 to 3x3) the pooling itself."""
    (x,) = random_double((2, 3, *size))
    for k in (3, 7):
        assert rel_err(adaptive_avg_pool(x, k), F.adaptive_avg_pool2d(x, k)) < 1e-14


@pytest.mark.parametrize("batch", [2, 9])  # train-mode BN on the mean's 1x1 map needs two samples
@pytest.mark.parametrize("size", [(1, 1), (2, 2), (4, 4), (3, 5), (8, 8), (20, 20)])
def test_idconv_computes_the_same_function_in_train_mode(batch, size):
    """Only the taps that reach the map computed after proj's BN, the pooling as a matmul (the
    pooling itself on 20x20), and the per-sample conv; random banks (the init's 0.02 would hide a
    wrong tap)."""
    torch.manual_seed(0)
    idconv = randomize(IDConv(8, kernel_size=7, num_groups=3)).double()
    with torch.no_grad():
        idconv.weight.normal_()
        idconv.bias.normal_()
    check_same_function(idconv, torch.randn(batch, 8, *size, dtype=torch.float64), tol=1e-10)


@pytest.mark.parametrize(
    "stage",
    [
        dict(depth=1, embed_dim=16, num_heads=2, sr_ratio=2),  # both branches, IDConv with G = 2
        dict(depth=1, embed_dim=16, num_heads=1, sr_ratio=1, idconv_groups=1),  # G = 1: static DW conv
        dict(depth=1, embed_dim=16, num_heads=2, sr_ratio=2, attn_ratio=0.0),  # IDConv only
        dict(depth=1, embed_dim=16, num_heads=2, sr_ratio=2, attn_ratio=1.0),  # OSRA only
    ],
)
def test_block_with_dpe_residual_in_its_kernel(stage):
    spec = tiny_spec(stages=[stage])
    block = randomize(TransXNetBlock(spec.stages[0]))
    x = torch.randn(3, 16, 6, 5)
    r = stage["sr_ratio"]
    m = ((6 - 1) // r + 1) * ((5 - 1) // r + 1)  # tokens after OSR
    check_same_function(block, x, torch.randn(1, stage["num_heads"], 30, m))


# -- whole networks --------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [tiny_spec(), *random_specs(6, seed=12)], ids=lambda s: s.digest()[:8])
@pytest.mark.parametrize("size", [(32, 32), (37, 29)])
def test_networks_compute_the_same_function_in_train_mode(spec, size):
    """In float64: train-mode norms over a handful of values (a batch of 4 on 1x1 maps) amplify
    rounding through a whole network, to 1e-4 in float32; any real difference (a tap, a padding,
    a residual) shows at 1e-2 or more."""
    torch.manual_seed(0)
    model = randomize(build_model(spec, drop_path_rate=0.0)).double()
    check_same_function(model, torch.randn(4, spec.in_chans, *size, dtype=torch.float64), tol=1e-7)


def test_a_network_at_batch_9_computes_the_same_function_in_train_mode():
    """Batches of 8 or more take the fast form's matmul paths (small-map depthwise convs, OSRA's
    spatial reduction), which the batch of 4 above never reaches."""
    stages = [  # narrow (the reference's grouped conv has batch x channels groups), maps 8x8 to 1x1
        dict(depth=1, embed_dim=8, num_heads=1, sr_ratio=8),
        dict(depth=1, embed_dim=8, num_heads=1, sr_ratio=2, idconv_kernel_size=5),
        dict(depth=1, embed_dim=16, num_heads=2, sr_ratio=2, idconv_groups=3, idconv_kernel_size=3),
        dict(depth=1, embed_dim=16, num_heads=2, sr_ratio=1),
    ]
    torch.manual_seed(0)
    model = randomize(build_model(tiny_spec(stages=stages), drop_path_rate=0.0)).double()
    check_same_function(model, torch.randn(9, 3, 32, 32, dtype=torch.float64), tol=1e-7)


def test_switching_back_and_forth_keeps_parameters_keys_and_outputs():
    torch.manual_seed(0)
    model = randomize(build_model(tiny_spec()))
    x = torch.randn(2, 3, 40, 40)
    keys, state = list(model.state_dict()), copy.deepcopy(model.state_dict())
    with torch.no_grad():
        ref = model(x)
        assert model.set_train_form("fast") is model and model.train_form == "fast"
        fast = model(x)
        assert model.set_train_form("reference").train_form == "reference"
        back = model(x)
    assert list(model.state_dict()) == keys
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert torch.equal(back, ref) and rel_err(fast, ref) < TOL


def test_a_checkpoint_saved_in_one_form_loads_in_the_other(tmp_path):
    torch.manual_seed(0)
    fast = randomize(build_model(tiny_spec())).set_train_form("fast")
    torch.save(fast.state_dict(), tmp_path / "fast.pt")
    reference = build_model(tiny_spec())
    reference.load_state_dict(torch.load(tmp_path / "fast.pt", weights_only=True), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(fast.eval()(x), reference.eval()(x)) < TOL


def test_bad_forms_are_refused():
    model = build_model(tiny_spec())
    with pytest.raises(ValueError, match="one of reference, fast, got 'quick'"):
        model.set_train_form("quick")
    model.reparameterize()
    with pytest.raises(RuntimeError, match="inference-only"):
        model.set_train_form("fast")


@pytest.mark.slow
def test_fast_form_scripts():
    torch.manual_seed(0)
    model = randomize(build_model(tiny_spec())).set_train_form("fast")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(torch.jit.script(model)(x), model(x)) < TOL


# -- training --------------------------------------------------------------------------------------
def test_tensor_batches_are_the_dataloaders_batches():
    data = TensorDataset(torch.randn(50, 1, 4, 4), torch.arange(50))
    loader = DataLoader(data, batch_size=8, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(3))
    ours = TensorBatches(
        data, 8, torch.device("cpu"), shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(3)
    )
    assert len(ours) == len(loader) == 6
    for _ in range(2):  # two epochs: each draws a new order
        for (x, y), (x_ref, y_ref) in zip(ours, loader, strict=True):
            assert torch.equal(y, y_ref) and torch.equal(x, x_ref)
    plain = TensorBatches(data, 16, torch.device("cpu"))
    assert [len(y) for _, y in plain] == [16, 16, 16, 2]


@pytest.mark.slow
def test_both_forms_train_to_the_same_losses():
    """A few epochs of the proxy recipe in each form: the same validation scores, the fast form
    with channels_last and a fused AdamW, the reference with the release's operators."""
    data = load_dataset("synthetic:200", 16)
    spec = tiny_spec(
        stages=[
            dict(depth=1, embed_dim=16, num_heads=1, sr_ratio=2),
            dict(depth=1, embed_dim=32, num_heads=2, sr_ratio=1),
        ]
    )
    config = dict(image_size=16, epochs=3, batch_size=16, lr=2e-3)
    fast = train_candidate(spec, data, TrainConfig(**config, train_form="fast"))
    reference = train_candidate(spec, data, TrainConfig(**config, train_form="reference"))
    assert TrainConfig().train_form == "fast"
    assert len(fast.losses) == len(reference.losses) == 3 * (160 // 16)
    diffs = [abs(a - b) / abs(b) for a, b in zip(fast.losses, reference.losses)]
    assert max(diffs) < 1e-3, max(diffs)
    assert max(abs(a - b) for a, b in zip(fast.history, reference.history)) <= 100 / 40  # one val image at most
