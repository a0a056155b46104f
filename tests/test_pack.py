"""Packed replicas (xnetspace/pack.py): each replica of a pack computes, learns and comes out as
the network its seed gives alone."""

from __future__ import annotations

import pytest
import timm
import torch

import xnetspace as xs
from xnetspace.pack import Pack

from .conftest import tiny_spec


def replicas(seeds, form="fast", dtype=torch.float32, **overrides):
    nets = []
    for seed in seeds:
        torch.manual_seed(seed)
        nets.append(xs.build_model(tiny_spec(**overrides)).set_train_form(form).to(dtype))
    return nets


@pytest.mark.parametrize("form", ["reference", "fast"])
def test_one_packed_step_is_each_replicas_own_step_in_float64(form):
    """Loss, gradients and BatchNorm statistics of every replica equal its lone run's to 1e-9 (an
    element-wise optimizer on the stacked tensors then makes the same update: AdamW's first step
    is about lr * sign(gradient), so the weights themselves are compared in the float32 training
    test, not here, where a gradient that is 0 up to rounding could flip its sign)."""
    seeds = [3, 5, 8]
    alone = replicas(seeds, form, torch.float64)
    pack = Pack(replicas(seeds, form, torch.float64)).train()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 3, 32, 32, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (3, 8), generator=gen)

    logits = pack(x)  # (S, B, classes)
    losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(3, 8).mean(1)
    losses.sum().backward()

    for i, net in enumerate(alone):
        loss = torch.nn.functional.cross_entropy(net.train()(x[i]), y[i])
        loss.backward()
        assert abs(loss.item() - losses[i].item()) <= 1e-9 * abs(loss.item())
        scale = max(p.grad.abs().max().item() for p in net.parameters())  # a gradient that is 0 up to rounding
        for name, param in net.named_parameters():  # (an invariant BN bias: 1e-22) is compared at this scale
            assert torch.allclose(pack.params[name].grad[i], param.grad, rtol=1e-9, atol=1e-12 * scale), name
        mine = pack.state_dict(i)
        for name, value in net.state_dict().items():
            if "running" in name:
                assert torch.allclose(mine[name], value, rtol=1e-12, atol=1e-15), name


def test_a_replica_comes_out_as_an_ordinary_network_that_timm_and_deploy_take(tmp_path):
    seeds = [1, 2]
    pack = Pack(replicas(seeds))
    x = torch.randn(4, 3, 32, 32)
    pack.eval()
    with torch.no_grad():
        packed = pack(x)  # the same images for every replica
    for i, _seed in enumerate(seeds):
        net = pack.replica(i).eval()
        assert isinstance(net, xs.TransXNet) and net.train_form == "fast"
        with torch.no_grad():
            assert torch.allclose(net(x), packed[i], rtol=1e-5, atol=1e-6)
        path = xs.save_checkpoint(net, tmp_path / f"replica{i}.pt")
        again = timm.create_model(
            "transxnet", spec=net.spec, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
        )
        deployed = xs.load_checkpoint(path).reparameterize()
        with torch.no_grad():
            assert torch.allclose(again.eval()(x), packed[i], rtol=1e-4, atol=1e-5)
            assert torch.allclose(deployed(x), packed[i], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(packed[0], packed[1])  # two seeds, two networks
    with pytest.raises(IndexError):
        pack.replica(2)


def test_a_pack_refuses_replicas_of_different_specs():
    with pytest.raises(ValueError, match="one spec"):
        Pack(replicas([0]) + [xs.build_model(tiny_spec(num_classes=7))])
    with pytest.raises(ValueError, match="at least one"):
        Pack([])
