"""Checkpoints: release layout -> ours, strict loads, parity with the release, own files."""

from __future__ import annotations

import pytest
import torch

from xnetspace import (
    CheckpointError,
    NetworkSpec,
    build_model,
    convert_official_state_dict,
    load_checkpoint,
    load_preset,
    load_weights,
    save_checkpoint,
)

from .conftest import release_state_dict, tiny_spec


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).norm() / ref.norm()).item()


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["t", "s", "b"])
def test_release_manifest_loads_strictly_through_the_converter(variant):
    release = release_state_dict(variant)
    model = build_model(f"transxnet_{variant}")
    converted = convert_official_state_dict(release)
    result = model.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert len(converted) == len(release) == len(model.state_dict())
    ours = model.state_dict()  # values land where the release keeps them
    torch.testing.assert_close(
        ours["stages.2.blocks.1.mixer.idconv.weight"], release["network.4.1.token_mixer.local_unit.weight"]
    )
    torch.testing.assert_close(ours["stages.3.downsample.conv.weight"], release["network.5.proj.conv.weight"])
    torch.testing.assert_close(ours["stages.1.pos_bias"], release["relative_pos_enc.1"])
    torch.testing.assert_close(ours["head.fc.weight"], release["classifier.2.weight"].flatten(1))
    torch.testing.assert_close(
        ours["stages.0.blocks.2.mixer.ste.bn_expand.running_var"], release["network.0.2.token_mixer.proj.7.running_var"]
    )


@pytest.mark.slow
@pytest.mark.parametrize("wrapper", [None, "state_dict", "model", "state_dict_ema"])
def test_release_file_forms_are_accepted(wrapper):
    release = release_state_dict("t")
    if wrapper:
        release = {wrapper: release, "epoch": 300}
    model = load_weights(build_model("transxnet_t"), release)
    assert model.stages[0].pos_bias.abs().sum() > 0


@pytest.mark.slow
def test_ddp_prefixes_are_removed():
    release = {f"module.{k}": v for k, v in release_state_dict("t").items()}
    load_weights(build_model("transxnet_t"), {"state_dict": release})


@pytest.mark.slow
def test_parity_with_the_release_within_1e_5(parity):
    spec = NetworkSpec.from_official_arch(
        parity["arch"], image_size=parity["image_size"], num_classes=parity["num_classes"]
    )
    model = load_weights(build_model(spec).eval(), parity["checkpoint"])
    with torch.no_grad():
        logits, stages = model.forward_intermediates(parity["input"])
        logits = model.forward_head(logits)
    assert len(stages) == len(parity["stage_outputs"]) == 4
    for ours, ref in zip(stages, parity["stage_outputs"]):
        assert ours.shape == ref.shape
        assert _rel_err(ours, ref) < 1e-5
    assert _rel_err(logits, parity["output"]) < 1e-5


def test_mismatched_checkpoint_is_refused_with_the_offending_keys():
    model = build_model("transxnet_t")
    before = model.stem.conv.weight.clone()
    release = release_state_dict("t")
    del release["network.0.0.norm1.weight"]
    release["network.6.0.mlp.fc1.0.weight"] = torch.zeros(3, 3, 1, 1)
    with pytest.raises(CheckpointError) as info:
        load_weights(model, release)
    message = str(info.value)
    assert "missing: stages.0.blocks.0.norm1.weight" in message
    assert "shape: stages.3.blocks.0.ffn.fc1.weight is (3, 3, 1, 1) in the checkpoint, (1792, 448, 1, 1)" in message
    assert torch.equal(model.stem.conv.weight, before), "a refused checkpoint must not half-load"


def test_wrong_variant_is_refused():
    with pytest.raises(CheckpointError, match=r"shape: stages\.0\.blocks\.0\.dpe\.weight") as info:
        load_weights(build_model("transxnet_t"), release_state_dict("s"))
    assert "unexpected: stages.1.blocks.3.dpe.weight" in info.value.problems
    assert "missing: stages.0.blocks.0.dpe.weight" not in info.value.problems


def test_keys_of_no_known_layout_are_listed():
    release = release_state_dict("t")
    release["network.6.proj.conv.weight"] = torch.zeros(1)  # even entries are stages, not downsamples
    release["aux_head.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"2 keys are not of the TransXNet release layout.*network.6.proj"):
        convert_official_state_dict(release)


def test_own_checkpoint_carries_its_spec(tmp_path):
    model = build_model(tiny_spec()).eval()
    path = save_checkpoint(model, tmp_path / "tiny.pt", epoch=3)
    rebuilt = load_checkpoint(path)
    assert rebuilt.spec == model.spec
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))
    raw = torch.load(path, weights_only=True)
    assert raw["epoch"] == 3 and raw["format"].startswith("xnetspace")


def test_own_checkpoint_refuses_another_spec(tmp_path):
    path = save_checkpoint(build_model(tiny_spec()), tmp_path / "tiny.pt")
    with pytest.raises(CheckpointError, match="holds network 'tiny', not the spec given"):
        load_checkpoint(path, spec=load_preset("transxnet_t"))


def test_release_checkpoint_needs_a_spec(tmp_path):
    path = tmp_path / "transx-t.pth.tar"
    torch.save({"state_dict": release_state_dict("t")}, path)
    with pytest.raises(CheckpointError, match="carries no spec"):
        load_checkpoint(path)
    assert load_checkpoint(path, spec=load_preset("transxnet_t")).stages[0].pos_bias.abs().sum() > 0


def test_loading_never_unpickles_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "hook": _Sentinel()}, path)
    with pytest.raises(CheckpointError, match="not a weights-only torch checkpoint"):
        load_checkpoint(path, spec=tiny_spec())
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "absent.pt")


class _Sentinel:
    pass
