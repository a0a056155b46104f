"""The cost model agrees with fvcore and with the built model, to the flop and the parameter."""

from __future__ import annotations

import pytest
import torch

from xnetspace import build_model, load_preset
from xnetspace.cost import cost_report, count_flops, count_params, fvcore_flops, parse_image_size
from xnetspace.latency import measure_latency
from xnetspace.model import TransXNet

from .conftest import random_specs, tiny_spec

SIZES = [224, (97, 131), (160, 96), (255, 255), (33, 65), (320, 288)]
RANDOM = 120  # random specs checked against fvcore; the coverage test below keeps them covering every value
PAPER = {"transxnet_t": (12_834_808, 1.846), "transxnet_s": (26_864_068, 4.686), "transxnet_b": (48_009_002, 8.474)}


def _check(spec, model, size, form: str = "reference") -> None:
    """Totals, per operator kind and per part equal fvcore's; params equal the model's."""
    report, analysis = cost_report(spec, size, form), fvcore_flops(model, size, spec.in_chans)
    detail = f"\nspec: {spec.model_dump_json()}\nimage size: {size}"
    assert report.flops == analysis.total(), detail
    assert dict(report.flops_by_kind) == dict(analysis.by_operator()), detail
    by_module = analysis.by_module()
    names = ["stem"] + [f"stages.{i}" for i in range(spec.num_stages)] + ["head"]
    assert [p.flops for p in report.parts] == [by_module[n] for n in names], detail
    assert report.params == sum(p.numel() for p in model.parameters()), detail
    for part, name in zip(report.parts, names):
        assert part.params == sum(p.numel() for p in model.get_submodule(name).parameters()), detail


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER)
def test_presets_agree_with_fvcore_at_six_sizes(name):
    spec = load_preset(name)
    model = build_model(spec).eval()
    for size in SIZES:
        _check(spec, model, size)
    params, gflops = PAPER[name]
    assert count_params(spec) == params
    assert round(count_flops(spec, 224) / 1e9, 3) == gflops


@pytest.mark.slow
def test_random_specs_agree_with_fvcore():
    # One failing spec is reported in full (the assertion message of _check).
    for i, spec in enumerate(random_specs(RANDOM, seed=1234)):
        size = [(64, 64), (97, 131), (45, 29), (32, 80)][i % 4]
        _check(spec, build_model(spec).eval(), size)


@pytest.mark.slow
def test_the_fused_form_agrees_with_fvcore():
    # The inference form's own cost (folded norms and layer scales, merged kernels, the attention
    # as baddbmm/bmm), against fvcore on the network built directly in that form.
    specs = [load_preset("transxnet_t"), tiny_spec(), tiny_spec(layer_scale_init_value=None)]
    for i, spec in enumerate(specs + random_specs(30, seed=321)):
        size = [224, (97, 131), (45, 29), (32, 80)][i % 4] if i else 224
        _check(spec, TransXNet(spec, form="fused"), size, form="fused")
    # Not the reference's count: MS-FFN's kernels merged to the largest (7x7 on every channel) add
    # more than the folded norms save (T at 224: 1.944 against 1.846 GFLOPs).
    t = load_preset("transxnet_t")
    assert cost_report(t, 224, "fused").flops > count_flops(t, 224)


@pytest.mark.slow
@pytest.mark.parametrize("stride", [1, 2, 4])
def test_every_stem_stride_agrees_with_fvcore(stride):
    """stem_stride (issue 29): the stem's map is ceil(H / stride), its kernel 3, 3 or 7, exact."""
    for i, spec in enumerate(random_specs(2, seed=29 + stride)):
        spec = spec.model_copy(update={"stem_stride": stride})
        size = [(33, 29), (28, 28)][i]
        model = build_model(spec).eval()
        _check(spec, model, size)
        assert cost_report(spec, size).parts[0].size == (-(-size[0] // stride), -(-size[1] // stride))
        assert [f["reduction"] for f in model.feature_info] == [stride * 2**k for k in range(spec.num_stages)]
    assert model.stem.conv.kernel_size == ((7, 7) if stride == 4 else (3, 3))


def test_the_stem_stride_is_one_two_or_four_and_the_papers_keeps_old_digests():
    spec = load_preset("transxnet_t")
    assert spec.stem_stride == 4 and spec.digest() == "9812272e6f731e5a"  # as before the field existed
    assert spec.model_copy(update={"stem_stride": 2}).digest() != spec.digest()
    for bad in (3, 0, 8, True, 2.5):
        with pytest.raises(ValueError, match="stem_stride"):
            type(spec).model_validate({**spec.model_dump(), "stem_stride": bad})


def test_the_random_specs_cover_the_space():
    specs = random_specs(RANDOM, seed=1234)
    stages = [s for spec in specs for s in spec.stages]
    assert {s.attn_ratio for s in stages} >= {0.0, 1.0, 0.5}
    assert {s.idconv_groups for s in stages} >= {1, 2, 3, 4}
    assert {s.sr_ratio for s in stages} == set(range(1, 9))
    assert {s.idconv_kernel_size for s in stages} == {1, 3, 5, 7, 9}
    assert {k for s in stages for k in s.ffn_kernel_sizes} == {1, 3, 5, 7, 9}
    assert {s.ste_kernel_size for s in stages} == {1, 3, 5}
    assert {spec.num_stages for spec in specs} == {1, 2, 3, 4, 5}
    assert {spec.layer_scale_init_value for spec in specs} == {None, 1e-5}


@pytest.mark.slow
def test_convolution_only_figure_is_the_papers_convention():
    report = cost_report(load_preset("transxnet_b"), 224)
    assert round(report.conv_flops / 1e9, 3) == 8.209  # ARCHITECTURE.md, fvcore convolutions only
    assert report.flops_by_kind["matmul"] > 0 and report.conv_flops < report.flops


def test_json_form_has_every_part():
    data = cost_report(tiny_spec(), (64, 48)).to_dict()
    assert [p["name"] for p in data["parts"]] == ["stem", "stage1", "stage2", "stage3", "stage4", "head"]
    assert sum(p["flops"] for p in data["parts"]) == data["flops"]
    assert data["parts"][1]["resolution"] == [16, 12] and data["parts"][1]["stage"]["embed_dim"] == 16


@pytest.mark.parametrize(
    "text,expected", [("224", (224, 224)), ("97x131", (97, 131)), (64, (64, 64)), ((32, 48), (32, 48))]
)
def test_parse_image_size(text, expected):
    assert parse_image_size(text) == expected


@pytest.mark.parametrize("bad", ["", "0", "ax3", "2x3x4", (0, 4)])
def test_parse_image_size_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="image size"):
        parse_image_size(bad)


@pytest.mark.slow
def test_measure_latency_returns_positive_milliseconds():
    ms = measure_latency(tiny_spec(), batch_size=2, image_size=64, min_run_time=0.05)
    assert 0 < ms < 5_000
    model = build_model(tiny_spec())
    assert measure_latency(tiny_spec(), image_size=32, model=model, min_run_time=0.05) > 0
    assert not model.training and next(model.parameters()).dtype == torch.float32
