"""Parametrised forms of a space (``rules:``): RegNet's quantized linear width rule, schedules
across stages, monotone knobs; sampled by Optuna with few knobs, counted exactly by the cost
model, refused with clear errors when they clash, and written back as readable space files."""

from __future__ import annotations

import math
import random
from collections import Counter

import optuna
import pytest
import yaml
from scipy import stats
from typer.testing import CliRunner

from xnetspace import build_model
from xnetspace.cli import app
from xnetspace.cost import cost_report, fvcore_flops
from xnetspace.search.space import RandomTrial, SearchSpace, SpaceError, load_space, space_yaml
from xnetspace.search.space_rules import interpolate, regnet_widths

SHIPPED = ["fashion_cpu", "tiny_cpu", "tiny_cpu_fixed", "tiny_cpu_refined", "transxnet_paper", "transxnet_stage_ratio"]


def rules_space(**changes) -> dict:
    """tiny_cpu's recipe with a width rule, a tied MLP ratio, an attention-share schedule and
    non-decreasing heads: 20 Optuna parameters instead of 30."""
    base = {
        "name": "rules",
        "network": {"drop_path_rate": 0.0, "image_size": 32},
        "rules": {
            "width": {
                "w0": {"low": 16, "high": 32, "step": 16},
                "wa": {"low": 8, "high": 48},
                "wm": {"low": 1.5, "high": 3.0},
                "depth": {"low": 4, "high": 8},
                "quantum": 16,
            },
            "schedules": {
                "attn_ratio": {"first": [0.25, 0.5, 0.75], "last": [0.25, 0.5, 0.75], "values": [0.25, 0.5, 0.75]}
            },
            "monotone": ["num_heads"],
        },
        "stage_defaults": {
            "mlp_ratio": {"choices": [2, 3, 4], "tie": "mlp"},
            "idconv_groups": [1, 2],
            "idconv_kernel_size": [3, 5, 7],
        },
        "stages": [
            {"num_heads": 1, "sr_ratio": [4, 8]},
            {"num_heads": [1, 2], "sr_ratio": [2, 4]},
            {"num_heads": [2, 4], "sr_ratio": [1, 2]},
            {"num_heads": [2, 4], "sr_ratio": 1},
        ],
        "constraints": {"image_size": 32, "flops": ["1.5M", "3M"], "max_params": "1.5M"},
        "train": {"image_size": 32, "epochs": 3, "batch_size": 64, "lr": 0.003},
    }
    base.update(changes)
    return base


def draws(space: SearchSpace, count: int, seed: int = 0):
    """``count`` valid specs with the random trial that drew each (invalid draws skipped)."""
    rng, out = random.Random(seed), []
    while len(out) < count:
        trial = RandomTrial(rng)
        try:
            out.append((space.sample(trial), trial))
        except ValueError:  # pydantic's ValidationError: an invalid draw
            continue
    return out


# -- the width rule -----------------------------------------------------------------------------------
def test_regnet_width_rule_worked_example():
    # u = 16 + 12 j = 16, 28, 40, 52, 64, 76; log2(u / 16) = 0, .81, 1.32, 1.70, 2, 2.25 -> steps 0, 1, 1, 2, 2, 2
    widths, steps = regnet_widths(16, 12, 2.0, 6, 8)
    assert steps == [0, 1, 1, 2, 2, 2] and widths == [16, 32, 32, 64, 64, 64]
    # wm 3 and quantum 16: 16 * 3 = 48, 16 * 9 = 144 (already multiples of 16)
    assert regnet_widths(16, 40, 3.0, 4, 16) == ([16, 48, 144, 144], [0, 1, 2, 2])
    assert interpolate(1, 8, 4, log=True) == pytest.approx([1, 2, 4, 8])
    assert interpolate(0.25, 0.75, 3) == pytest.approx([0.25, 0.5, 0.75])


def test_width_rule_space_samples_the_rule_with_few_knobs():
    space = SearchSpace.model_validate(rules_space())
    names = space.param_names()
    assert len(names) == 20 and {
        "width.w0",
        "width.wa",
        "width.wm",
        "width.depth",
        "stage3-4.num_heads",
        "schedule.attn_ratio.first",
        "tied.mlp",
    } <= set(names)
    assert not any(n.endswith((".embed_dim", ".depth")) and n.startswith("stage") for n in names)
    for spec, trial in draws(space, 40):
        p = trial.params
        widths, _ = regnet_widths(p["width.w0"], p["width.wa"], p["width.wm"], p["width.depth"], 16)
        assert [w for s in spec.stages for w in [s.embed_dim] * s.depth] == widths  # the rule, block by block
        assert sum(s.depth for s in spec.stages) == p["width.depth"]
        assert [s.embed_dim for s in spec.stages] == sorted({s.embed_dim for s in spec.stages})
        heads = [s.num_heads for s in spec.stages]
        assert heads == sorted(heads) and heads[0] == 1 and heads[1] in (1, 2) and set(heads[2:]) <= {2, 4}
        linear = [
            p["schedule.attn_ratio.first"] + (p["schedule.attn_ratio.last"] - p["schedule.attn_ratio.first"]) * i / 3
            for i in range(4)
        ]
        expected = [min((0.25, 0.5, 0.75), key=lambda v: (abs(v - x), v)) for x in linear]
        assert [s.attn_ratio for s in spec.stages] == expected
        assert len({s.mlp_ratio for s in spec.stages}) == 1


def test_the_cost_model_counts_rule_specs_exactly():
    space = SearchSpace.model_validate(rules_space())
    for i, (spec, _) in enumerate(draws(space, 3, seed=5)):
        model = build_model(spec).eval()
        report = cost_report(spec, 32)
        assert report.params == sum(p.numel() for p in model.parameters())
        if i == 0:  # fvcore traces the model: one spec is enough to show the FLOPs are the same count
            assert report.flops == fvcore_flops(model, (32, 32), spec.in_chans).total()


def test_optuna_samplers_take_the_rule_parameters():
    space = SearchSpace.model_validate(rules_space())
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5))
    valid = 0
    for _ in range(40):
        trial = study.ask()
        try:
            spec = space.sample(trial)
        except ValueError:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        valid += 1
        study.tell(trial, float(sum(spec.embed_dims)))
        assert isinstance(trial.params["stage3-4.num_heads"], str)  # "2,4" travels as text
    assert valid >= 5
    fixed = {
        "width.w0": 16,
        "width.wa": 12.0,
        "width.wm": 2.0,
        "width.depth": 6,
        "schedule.attn_ratio.first": 0.25,
        "schedule.attn_ratio.last": 0.75,
        "stage1.sr_ratio": 4,
        "stage2.sr_ratio": 2,
        "stage3.sr_ratio": 1,
        "stage2.num_heads": 1,
        "stage3-4.num_heads": "2,4",
        "tied.mlp": 2,
    }
    fixed |= {f"stage{i}.{k}": v for i in range(1, 5) for k, v in (("idconv_groups", 1), ("idconv_kernel_size", 3))}
    with pytest.raises(
        ValueError,
        match=r"rules.width gives 3 stages, the space has 4 \(w0 16, wa 12, wm 2, depth 6: "
        r"widths \[16, 32, 64\]\)",
    ):
        space.sample(optuna.trial.FixedTrial(fixed))
    spec = space.sample(optuna.trial.FixedTrial({**fixed, "width.wa": 16.0, "width.depth": 8}))
    # u = 16 + 16 j: 16, 32, 48, 64, 80, 96, 112, 128 -> steps 0 1 2 2 2 3 3 3 (log2 of 1..8, rounded)
    assert spec.embed_dims == (16, 32, 64, 128) and spec.depths == (1, 1, 3, 3)
    assert [s.attn_ratio for s in spec.stages] == [0.25, 0.5, 0.5, 0.75]  # 0.25, 0.4167, 0.5833, 0.75 rounded


# -- schedules and monotone knobs ------------------------------------------------------------------------
def test_schedules_round_to_valid_values_without_a_list():
    data = rules_space(
        rules={
            "schedules": {
                "attn_ratio": {"first": {"low": 0.1, "high": 0.9}, "last": 0.6},
                "num_heads": {"first": 1, "last": [4, 8], "log": True},
            }
        }
    )
    data["stages"] = [{"depth": 1, "embed_dim": w, "sr_ratio": 1} for w in (16, 32, 48, 64)]
    space = SearchSpace.model_validate(data)
    for spec, trial in draws(space, 30, seed=2):
        last = trial.params["schedule.num_heads.last"]
        heads = [max(1, math.floor(x + 0.5)) for x in interpolate(1, last, 4, log=True)]
        assert [s.num_heads for s in spec.stages] == heads
        for stage in spec.stages:  # the nearest share whose channels the heads divide
            assert stage.attn_channels % stage.num_heads == 0


def test_monotone_knobs_are_drawn_uniformly_over_the_allowed_combinations():
    data = load_space("tiny_cpu").model_dump()
    data["rules"] = {"monotone": ["depth", "embed_dim"]}
    space = SearchSpace.model_validate(data)
    names = space.param_names()
    # depth 1-2 in every stage: one chain; widths: only stages 3 (48-96) and 4 (64-128) overlap
    assert {"stage1-4.depth", "stage3-4.embed_dim", "stage1.embed_dim", "stage2.embed_dim"} <= set(names)
    assert len(names) == 30 - 4 + 1 - 2 + 1
    combos = space.monotone_options["depth"][(0, 3)]
    assert combos == [(1, 1, 1, 1), (1, 1, 1, 2), (1, 1, 2, 2), (1, 2, 2, 2), (2, 2, 2, 2)]
    assert len(space.monotone_options["embed_dim"][(2, 3)]) == 4 * 3 - 2  # (80, 64) and (96, 64) go
    seen = Counter()
    for spec, _ in draws(space, 1000, seed=3):
        assert list(spec.depths) == sorted(spec.depths) and list(spec.embed_dims) == sorted(spec.embed_dims)
        assert 16 <= spec.embed_dims[0] <= 32 and 64 <= spec.embed_dims[3] <= 128
        seen[spec.depths] += 1
    assert len(seen) == 5 and stats.chisquare(list(seen.values())).pvalue > 0.001  # uniform over the 5


def test_a_monotone_chain_with_one_combination_is_no_knob():
    data = yaml.safe_load(space_yaml(load_space("tiny_cpu")))
    data["rules"] = {"monotone": ["depth"]}
    data["stages"][1]["depth"] = 2  # stages 2-4 overlap, but from a fixed 2 only (2, 2, 2) remains
    data["stages"][0]["depth"] = 1
    space = SearchSpace.model_validate(data)
    assert space.monotone_options["depth"] == {(1, 3): [(2, 2, 2)]}
    assert not [n for n in space.param_names() if n.endswith(".depth")]
    assert all(spec.depths == (1, 2, 2, 2) for spec, _ in draws(space, 50))


# -- refusals -------------------------------------------------------------------------------------------
def _without_rules(**rules):
    return rules_space(rules=rules)


def _width(**changes):
    rules = rules_space()["rules"]
    return rules_space(rules={**rules, "width": {**rules["width"], **changes}})


BAD = [
    (
        "width rule and stage widths",
        rules_space(stages=[{"embed_dim": 16, "num_heads": 1}] * 4),
        r"rules.width sets embed_dim in every stage, but stages\[0\].embed_dim defines it too",
    ),
    (
        "quantum too small",
        _width(quantum=8),
        r"rules.width.quantum 8 can give invalid widths: stage 3: attn_ratio 0.25 x 8 = 2 attention channels, not "
        r"divisible by num_heads 4; the smallest quantum that keeps every stage valid is 16",
    ),
    ("w0 off the quantum", _width(w0=24), r"w0 value 24 is not a multiple of the quantum 16"),
    ("wm not above 1", _width(wm=1.0), r"wm 1 must be above 1"),
    ("depth below the stages", _width(depth=[2, 3]), r"rules.width.depth is at most 3 blocks, fewer than the 4 stages"),
    ("tied width parameter", _width(wa={"low": 1, "high": 9, "tie": "x"}), r"wa cannot be tied"),
    (
        "monotone embed_dim under a width rule",
        rules_space(rules={**rules_space()["rules"], "monotone": ["embed_dim"]}),
        r"rules.monotone: embed_dim is set by rules.width; its widths never decrease already",
    ),
    (
        "monotone tied knob",
        rules_space(rules={**rules_space()["rules"], "monotone": ["mlp_ratio"]}),
        r"rules.monotone: mlp_ratio is tied \(tie 'mlp'\) in stage 1",
    ),
    (
        "monotone unknown knob",
        _without_rules(monotone=["ffn_kernel_sizes"]),
        r"monotone: 'ffn_kernel_sizes' is not a numeric stage knob",
    ),
    (
        "schedule of a knob the stages set",
        rules_space(
            rules={"schedules": {"num_heads": {"first": 1, "last": 2}}},
            stages=[{"depth": 1, "embed_dim": 32, "num_heads": 1}] * 4,
        ),
        r"rules.schedules.num_heads sets num_heads in every stage, but stages\[0\].num_heads defines it too",
    ),
    (
        "schedule of an unschedulable knob",
        _without_rules(schedules={"depth": {"first": 1, "last": 2}}),
        r"schedules.depth: only num_heads, sr_ratio, idconv_groups, mlp_ratio, attn_ratio can follow a schedule",
    ),
    (
        "schedule value out of bounds",
        _without_rules(schedules={"sr_ratio": {"first": 1, "last": 2, "values": [0, 1]}}),
        r"schedules.sr_ratio.values: sr_ratio value 0 is not valid",
    ),
]


@pytest.mark.parametrize("what,data,message", BAD, ids=[b[0] for b in BAD])
def test_clashing_rules_are_refused_naming_the_field(what, data, message, tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpaceError, match=r"(?s)invalid space file .*space.yaml.*" + message):
        load_space(path)


def test_a_continuous_monotone_knob_is_refused():
    data = load_space("tiny_cpu").model_dump()
    data["stage_defaults"]["knobs"]["attn_ratio"] = {"low": 0.25, "high": 0.75}
    data["rules"] = {"monotone": ["attn_ratio"]}
    with pytest.raises(ValueError, match="attn_ratio of stage 1 is a continuous range; give it a step or choices"):
        SearchSpace.model_validate(data)


# -- files ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_spaces_are_written_back_as_they_are(name, tmp_path):
    space = load_space(name)
    path = tmp_path / "again.yaml"
    path.write_text(space_yaml(space, "written back"))
    assert path.read_text().startswith("# written back\n") and load_space(path) == space


def test_a_rules_space_is_written_back_and_the_command_shows_it(tmp_path):
    space = SearchSpace.model_validate(rules_space())
    path = tmp_path / "rules.yaml"
    path.write_text(space_yaml(space))
    assert load_space(path) == space
    text = path.read_text()
    assert "rules:\n  width:\n    w0: {low: 16, high: 32, step: 16}\n" in text and "monotone: [num_heads]" in text
    result = CliRunner().invoke(app, ["space", str(path), "--draws", "300"])
    assert result.exit_code == 0, result.output
    assert "parameters (20): schedule.attn_ratio.first" in result.output
    assert "rules: width rule (w0, wa, wm, depth; quantum 16) sets embed_dim and depth" in result.output
    assert "monotone num_heads (stages 3-4: 3 combinations)" in result.output and "within budget" in result.output
