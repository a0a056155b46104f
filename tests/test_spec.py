"""Specs: round trips, the official arch dict, and clear errors for every kind of invalid spec."""

from __future__ import annotations

import json

import pytest
import yaml
from pydantic import ValidationError

from xnetspace import NetworkSpec, SpecError, format_validation_error, load_preset, load_spec, save_spec
from xnetspace.model.osra import reduced_size
from xnetspace.spec import (
    MAX_DEPTH,
    MAX_EMBED_DIM,
    MAX_HEADS,
    MAX_IDCONV_GROUPS,
    MAX_IMAGE_SIZE,
    MAX_IN_CHANS,
    MAX_SR_RATIO,
    StageSpec,
    preset_names,
    resolve_spec,
)
from xnetspace.text import MAX_FILE_BYTES, read_text_file, short_repr, yaml_mapping

from .conftest import random_specs, tiny_spec

T_ARCH = {
    "layers": [3, 3, 9, 3],
    "embed_dims": [48, 96, 224, 448],
    "kernel_size": [7] * 4,
    "num_groups": [2, 2, 2, 2],
    "sr_ratio": [8, 4, 2, 1],
    "num_heads": [1, 2, 4, 8],
    "mlp_ratios": [4, 4, 4, 4],
    "layer_scale_init_value": 1e-5,
}


@pytest.mark.parametrize("spec", [load_preset(n) for n in preset_names()] + random_specs(20), ids=str)
def test_yaml_and_json_round_trip_without_loss(spec, tmp_path):
    assert NetworkSpec.from_yaml(spec.to_yaml()) == spec
    assert NetworkSpec.model_validate_json(spec.model_dump_json()) == spec
    for suffix in (".yaml", ".json"):
        assert load_spec(save_spec(spec, tmp_path / f"spec{suffix}")) == spec


def test_from_official_arch_matches_the_t_preset():
    spec = NetworkSpec.from_official_arch(T_ARCH, name="transxnet_t", drop_path_rate=0.1)
    assert spec == load_preset("transxnet_t")
    assert spec.depths == (3, 3, 9, 3) and spec.embed_dims == (48, 96, 224, 448)
    assert [s.attn_channels for s in spec.stages] == [24, 48, 112, 224]


def test_from_official_arch_reads_the_parity_arch(parity):
    spec = NetworkSpec.from_official_arch(
        parity["arch"], image_size=parity["image_size"], num_classes=parity["num_classes"]
    )
    assert [s.idconv_kernel_size for s in spec.stages] == parity["arch"]["kernel_size"]
    assert spec.num_classes == 10


def test_from_official_arch_rejects_missing_keys_and_ragged_lists():
    with pytest.raises(SpecError, match=r"lacks .*num_heads"):
        NetworkSpec.from_official_arch({k: v for k, v in T_ARCH.items() if k != "num_heads"})
    with pytest.raises(SpecError, match=r"must all have 4 entries.*sr_ratio"):
        NetworkSpec.from_official_arch({**T_ARCH, "sr_ratio": [8, 4, 2]})


def test_digest_ignores_name_and_number_spelling_but_not_architecture():
    spec = tiny_spec()
    same = NetworkSpec.model_validate({**spec.model_dump(), "name": "other"})
    data = spec.model_dump()
    data["stages"][0]["mlp_ratio"] = 4  # int spelling of 4.0
    assert spec.digest() == same.digest() == NetworkSpec.model_validate(data).digest()
    data["stages"][0]["depth"] = 2
    assert NetworkSpec.model_validate(data).digest() != spec.digest()


def test_position_bias_shapes_follow_the_release():
    spec = load_preset("transxnet_t")
    assert [spec.pos_bias_shape(i) for i in range(4)] == [
        (1, 1, 3136, 49),
        (1, 2, 784, 49),
        (1, 4, 196, 49),
        (1, 8, 49, 49),
    ]


@pytest.mark.parametrize(
    "size,r,expected", [(56, 8, 7), (57, 8, 8), (14, 2, 7), (15, 2, 8), (12, 3, 5), (13, 3, 5), (7, 1, 7), (1, 8, 1)]
)
def test_reduced_size_is_the_osr_conv_output(size, r, expected):
    import torch

    conv = torch.nn.Conv2d(1, 1, r + 3, stride=r, padding=(r + 3) // 2) if r > 1 else torch.nn.Identity()
    assert reduced_size(size, r) == expected == conv(torch.zeros(1, 1, size, size)).shape[-1]


GOOD_STAGE = dict(depth=1, embed_dim=48, num_heads=2, sr_ratio=2)

# (what is wrong, network fields, stage 0 fields, text the message must contain)
INVALID = [
    ("non-positive depth", {}, dict(depth=0), r"stages\[0\]\.depth = 0: .*greater than or equal to 1"),
    ("negative embed_dim", {}, dict(embed_dim=-8), r"stages\[0\]\.embed_dim = -8"),
    ("zero heads", {}, dict(num_heads=0), r"stages\[0\]\.num_heads = 0"),
    ("zero sr_ratio", {}, dict(sr_ratio=0), r"stages\[0\]\.sr_ratio = 0"),
    ("zero IDConv groups", {}, dict(idconv_groups=0), r"stages\[0\]\.idconv_groups = 0"),
    (
        "even IDConv kernel",
        {},
        dict(idconv_kernel_size=4),
        r"stages\[0\]\.idconv_kernel_size = 4: kernel sizes must be odd",
    ),
    (
        "even FFN kernel",
        {},
        dict(ffn_kernel_sizes=[1, 3, 4]),
        r"stages\[0\]\.ffn_kernel_sizes\[2\] = 4: kernel sizes must be odd",
    ),
    ("no FFN kernels", {}, dict(ffn_kernel_sizes=[]), r"ffn_kernel_sizes needs at least one"),
    (
        "attn channels not divisible by heads",
        {},
        dict(num_heads=5),
        r"attention channels 24 .*not divisible by num_heads 5; "
        r"nearest valid attn_ratio: 0.416667 \(20 channels\) or 0.520833 \(25 channels\)",
    ),
    (
        "attention share not whole",
        {},
        dict(attn_ratio=0.3, num_heads=1),
        r"attn_ratio 0.3 x embed_dim 48 = 14.4 .*not a whole number; "
        r"nearest valid attn_ratio: 0.291667 \(14 channels\) or 0.3125 \(15 channels\)",
    ),
    ("attention share above 1", {}, dict(attn_ratio=1.5), r"stages\[0\]\.attn_ratio = 1.5: .*less than or equal to 1"),
    ("IDConv with too few channels", {}, dict(attn_ratio=46 / 48, num_heads=1), r"IDConv gets 2 channels"),
    (
        "mlp ratio not whole",
        {},
        dict(mlp_ratio=3.3),
        r"mlp_ratio 3.3 x embed_dim 48 = 158.4 .*use mlp_ratio 3.29167 \(158 channels\) or 3.3125 \(159 channels\)",
    ),
    (
        "FFN narrower than its branches",
        {},
        dict(embed_dim=4, num_heads=1, attn_ratio=0, mlp_ratio=0.5),
        r"MS-FFN hidden width 2 .*smaller than the 4 ffn_kernel_sizes",
    ),
    ("non-positive mlp ratio", {}, dict(mlp_ratio=0), r"stages\[0\]\.mlp_ratio = 0: .*greater than 0"),
    ("unknown stage field", {}, dict(dpeth=3), r"stages\[0\]\.dpeth = 3: unknown field \(did you mean 'depth'\?\)"),
    (
        "stage field at top level",
        dict(depth=3),
        {},
        r"depth = 3: unknown field here: 'depth' is a field of each entry of stages",
    ),
    ("wrong type", {}, dict(depth="three"), r"stages\[0\]\.depth = 'three': .*valid integer"),
    ("fractional depth", {}, dict(depth=2.5), r"stages\[0\]\.depth = 2.5: .*valid integer"),
    ("no stages", dict(stages=[]), None, r"stages = \[\]: a network needs at least one stage"),
    ("negative num_classes", dict(num_classes=-1), {}, r"num_classes = -1"),
    ("zero in_chans", dict(in_chans=0), {}, r"in_chans = 0"),
    ("drop_path_rate of 1", dict(drop_path_rate=1.0), {}, r"drop_path_rate = 1.0: .*less than 1"),
    ("stages not a list", dict(stages="four"), None, r"stages = 'four'"),
]


@pytest.mark.parametrize("what,net,stage,message", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_spec_is_rejected_with_a_clear_message(what, net, stage, message):
    data = {"stages": [{**GOOD_STAGE, **stage}]} if stage is not None else {}
    data.update(net)
    with pytest.raises(ValidationError) as info:
        NetworkSpec.model_validate(data)
    text = format_validation_error(info.value)
    assert text.startswith("invalid spec (")
    assert __import__("re").search(message, text), text


def test_every_invalid_case_has_its_own_message():
    messages = set()
    for _, net, stage, _ in INVALID:
        data = {"stages": [{**GOOD_STAGE, **stage}]} if stage is not None else {}
        data.update(net)
        with pytest.raises(ValidationError) as info:
            NetworkSpec.model_validate(data)
        messages.add(format_validation_error(info.value))
    assert len(messages) == len(INVALID) >= 15


def test_specs_are_frozen_and_never_rounded():
    spec = tiny_spec()
    with pytest.raises(ValidationError):
        spec.stages[0].depth = 3  # frozen
    stage = NetworkSpec.model_validate({"stages": [dict(GOOD_STAGE, attn_ratio=1 / 3, num_heads=1)]}).stages[0]
    assert stage.attn_channels == 16 and stage.idconv_channels == 32  # 1/3 of 48 is exact enough


def test_load_spec_errors_name_the_file(tmp_path):
    with pytest.raises(SpecError, match="cannot read spec file"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [{depth: 1, embed_dim: 48,")
    with pytest.raises(SpecError, match=r"bad\.yaml: not valid YAML"):
        load_spec(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(bad)
    bad.write_text(yaml.safe_dump({"stages": [dict(GOOD_STAGE, depth=0)]}))
    with pytest.raises(SpecError, match=r"(?s)invalid spec file .*bad.yaml .*stages\[0\]\.depth = 0"):
        load_spec(bad)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    with pytest.raises(SpecError, match="not valid JSON"):
        load_spec(bad_json)
    bad_json.write_text(json.dumps({"stages": [GOOD_STAGE], "num_clases": 3}))
    with pytest.raises(SpecError, match=r"num_clases = 3: unknown field \(did you mean 'num_classes'\?\)"):
        load_spec(bad_json)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(SpecError, match=r"unknown preset 'transxnet_x'.*transxnet_b, transxnet_s, transxnet_t"):
        load_preset("transxnet_x")


@pytest.mark.parametrize(
    "model,field,limit",
    [
        (StageSpec, "depth", MAX_DEPTH),
        (StageSpec, "embed_dim", MAX_EMBED_DIM),
        (StageSpec, "num_heads", MAX_HEADS),
        (StageSpec, "sr_ratio", MAX_SR_RATIO),
        (StageSpec, "idconv_groups", MAX_IDCONV_GROUPS),
        (NetworkSpec, "in_chans", MAX_IN_CHANS),
        (NetworkSpec, "image_size", MAX_IMAGE_SIZE),
    ],
)
def test_sizes_have_upper_bounds_stated_in_their_descriptions(model, field, limit):
    assert str(limit) in model.model_fields[field].description
    stage = {"depth": 1, "embed_dim": 16, "num_heads": 1}
    data = {"stages": [{**stage, field: limit + 1}]} if model is StageSpec else {"stages": [stage], field: limit + 1}
    with pytest.raises(ValidationError, match=f"less than or equal to {limit}"):
        NetworkSpec.model_validate(data)
    fits = {"stages": [{**stage, field: limit}]} if field in ("depth", "idconv_groups", "sr_ratio") else None
    if fits:  # the bound itself is allowed
        assert getattr(NetworkSpec.model_validate(fits).stages[0], field) == limit


@pytest.mark.parametrize(
    "field,value",
    [
        ("layer_scale_init_value", float("inf")),
        ("layer_scale_init_value", float("nan")),
        ("drop_rate", float("nan")),
        ("drop_path_rate", float("-inf")),
    ],
)
def test_float_fields_are_finite(field, value):
    with pytest.raises(ValidationError, match="finite number"):
        NetworkSpec.model_validate({"stages": [{"depth": 1, "embed_dim": 16}], field: value})
    with pytest.raises(ValidationError, match="finite number"):
        StageSpec(depth=1, embed_dim=16, mlp_ratio=float("nan"))


def test_error_messages_quote_values_short():
    assert short_repr("x" * 10_000) == repr("x" * 80)[:77] + "..."
    assert len(short_repr(list(range(10**6)))) <= 80
    loop = []
    loop.append(loop)
    assert len(short_repr(loop)) <= 80
    with pytest.raises(ValidationError) as err:
        NetworkSpec.model_validate(
            {"stages": [{"depth": "d" * 100_000, "embed_dim": 16}] * 3, **{f"x{i}": 1 for i in range(40)}}
        )
    message = format_validation_error(err.value)
    assert "(43 problems)" in message and "... and 23 more" in message and len(message) < 3000


def test_yaml_aliases_that_expand_hugely_are_refused_but_small_ones_work():
    text = "a: &a [1, 2]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    nested = "".join(
        f"l{i}: &l{i} [*l{i - 1}, *l{i - 1}, *l{i - 1}, *l{i - 1}, *l{i - 1}, "
        f"*l{i - 1}, *l{i - 1}, *l{i - 1}, *l{i - 1}, *l{i - 1}]\n"
        for i in range(1, 8)
    ).replace("*l0", "*b")
    assert yaml_mapping(text, "a spec")["b"][9] == [1, 2]
    with pytest.raises(SpecError, match="more than 100,000 YAML values"):
        yaml_mapping(text + nested, "a spec")
    with pytest.raises(SpecError, match="recursive"):
        yaml_mapping("a: &a [1, *a]\n", "a spec")


def test_read_text_file_refuses_devices_large_and_binary_files(tmp_path):
    with pytest.raises(SpecError, match="not a regular file"):
        read_text_file("/dev/zero", "spec file")
    (tmp_path / "big.yaml").write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    with pytest.raises(SpecError, match="larger than 1,048,576 bytes"):
        read_text_file(tmp_path / "big.yaml", "spec file")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SpecError, match="not UTF-8"):
        read_text_file(tmp_path / "bin.yaml", "spec file")
    with pytest.raises(SpecError, match="unknown preset"):
        resolve_spec("p" * 5000)  # too long a name for the file system: a preset name, unknown
