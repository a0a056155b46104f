"""Design spaces: shipped files, clear errors for bad ones, and sampling that stays in the space."""

from __future__ import annotations

import random

import optuna
import pytest
import yaml

from xnetspace import NetworkSpec, load_preset
from xnetspace.cost import cost_report
from xnetspace.search.space import RandomTrial, SearchSpace, SpaceError, load_space, parse_count, space_data

SHIPPED = ["fashion_cpu", "tiny_cpu", "tiny_cpu_refined", "transxnet_paper", "transxnet_stage_ratio"]


def space_dict(**changes) -> dict:
    base = {
        "name": "t",
        "stage_defaults": {"depth": {"low": 1, "high": 2}, "mlp_ratio": [2, 4]},
        "stages": [
            {"embed_dim": {"low": 16, "high": 32, "step": 8}, "sr_ratio": [2, 4]},
            {"embed_dim": 32, "num_heads": [1, 2], "attn_ratio": {"low": 0.25, "high": 0.75, "step": 0.25}},
        ],
        "constraints": {"image_size": 32, "flops": ["100k", "50M"]},
    }
    base.update(changes)
    return base


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_spaces_load_and_can_meet_their_budgets(name):
    space = load_space(f"spaces/{name}.yaml")
    assert load_space(name) == space  # also shipped inside the package
    check = space.check(draws=300)
    assert check.feasible > 0 and 0 < check.acceptance <= 1


def test_paper_spaces_fix_or_free_the_attention_share():
    paper, ratio = load_space("transxnet_paper"), load_space("transxnet_stage_ratio")
    specs = paper.random_specs(30, seed=1)
    assert {s.attn_ratio for spec in specs for s in spec.stages} == {0.5}
    specs = ratio.random_specs(30, seed=1)
    assert len({s.attn_ratio for spec in specs for s in spec.stages}) > 1
    for space in (paper, ratio):  # TransXNet-T is one of the paper space's points, within budget
        assert space.violations(load_preset("transxnet_t")) == []


def test_optuna_trials_give_valid_specs_inside_the_space():
    space = SearchSpace.model_validate(space_dict())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = 0
    for _ in range(60):
        trial = study.ask()
        try:
            spec = space.sample(trial, num_classes=7)
        except Exception as err:  # noqa: BLE001 - only cross-field invalid draws may fail, as pydantic errors
            assert type(err).__name__ == "ValidationError"
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        seen += 1
        s1, s2 = spec.stages
        assert 1 <= s1.depth <= 2 and s1.embed_dim in (16, 24, 32) and s1.sr_ratio in (2, 4)
        assert s2.embed_dim == 32 and s2.attn_ratio in (0.25, 0.5, 0.75) and s2.mlp_ratio in (2, 4)
        assert spec.num_classes == 7
        assert set(trial.params) <= {
            "stage1.depth",
            "stage1.embed_dim",
            "stage1.sr_ratio",
            "stage1.mlp_ratio",
            "stage2.depth",
            "stage2.num_heads",
            "stage2.attn_ratio",
            "stage2.mlp_ratio",
        }
        study.tell(trial, 0.0)
    assert seen > 40


def test_fixed_trial_reproduces_a_spec():
    space = SearchSpace.model_validate(space_dict())
    params = {
        "stage1.depth": 2,
        "stage1.embed_dim": 24,
        "stage1.sr_ratio": 4,
        "stage1.mlp_ratio": 4,
        "stage2.depth": 1,
        "stage2.num_heads": 2,
        "stage2.attn_ratio": 0.25,
        "stage2.mlp_ratio": 2,
    }
    spec = space.sample(optuna.trial.FixedTrial(params))
    assert spec.stages[0].embed_dim == 24 and spec.stages[1].attn_channels == 8


def test_ties_share_one_value_and_kernel_lists_are_choices():
    data = space_dict(
        stage_defaults={
            "depth": 1,
            "mlp_ratio": {"choices": [2, 3, 4], "tie": "mlp"},
            "ffn_kernel_sizes": [[1, 3], [1, 3, 5, 7]],
        }
    )
    space = SearchSpace.model_validate(data)
    rng = random.Random(0)
    specs = [space.sample(RandomTrial(rng)) for _ in range(30)]
    assert all(len({s.mlp_ratio for s in spec.stages}) == 1 for spec in specs)
    assert {spec.stages[0].mlp_ratio for spec in specs} == {2, 3, 4}
    assert {spec.stages[1].ffn_kernel_sizes for spec in specs} == {(1, 3), (1, 3, 5, 7)}
    trial = optuna.create_study().ask()
    space.sample(trial)
    assert "tied.mlp" in trial.params and "stage1.mlp_ratio" not in trial.params
    assert set(trial.params) == set(space.param_names())
    assert isinstance(trial.params["stage1.ffn_kernel_sizes"], str)  # "1,3" travels as text
    fixed = SearchSpace.model_validate(space_dict(stage_defaults={"depth": 1, "ffn_kernel_sizes": [1, 5]}))
    assert fixed.random_specs(1, feasible_only=False)[0].stages[0].ffn_kernel_sizes == (1, 5)


def test_random_specs_meet_the_budget():
    space = load_space("tiny_cpu")
    low, high = space.constraints.flops
    for spec in space.random_specs(40, seed=3, num_classes=10, in_chans=1):
        report = cost_report(spec, space.constraints.image_size)
        assert low <= report.flops <= high and report.params <= space.constraints.max_params


BAD = [
    (
        "unknown knob",
        dict(stages=[{"depth": 1, "embed_dim": 16, "dpeth": 2}]),
        r"stages\[0\]: .*unknown knob\(s\) \['dpeth'\]",
    ),
    (
        "range low above high",
        dict(stages=[{"depth": {"low": 3, "high": 1}, "embed_dim": 16}]),
        r"low 3 is above high 1",
    ),
    (
        "whole knob with a fractional step",
        dict(stages=[{"depth": 1, "embed_dim": {"low": 16, "high": 32, "step": 4.5}}]),
        r"embed_dim is a whole number",
    ),
    (
        "invalid choice",
        dict(stages=[{"depth": 1, "embed_dim": 16, "idconv_kernel_size": [3, 4]}]),
        r"idconv_kernel_size value 4 is not valid: .*odd",
    ),
    ("negative fixed value", dict(stages=[{"depth": -1, "embed_dim": 16}]), r"depth value -1 is not valid"),
    (
        "range for a list knob",
        dict(stages=[{"depth": 1, "embed_dim": 16, "ffn_kernel_sizes": {"low": 1, "high": 7}}]),
        r"ffn_kernel_sizes takes a value or a list of choices, not a range",
    ),
    (
        "log range from zero",
        dict(stages=[{"depth": 1, "embed_dim": 16, "mlp_ratio": {"low": 0, "high": 4, "log": True}}]),
        r"log ranges need low > 0",
    ),
    ("missing width", dict(stages=[{"depth": 1}], stage_defaults={}), r"stage 1 does not define embed_dim"),
    (
        "tie defined twice differently",
        dict(
            stages=[
                {"depth": 1, "embed_dim": 16, "mlp_ratio": {"choices": [2, 4], "tie": "m"}},
                {"depth": 1, "embed_dim": 32, "mlp_ratio": {"choices": [2, 3], "tie": "m"}},
            ]
        ),
        r"tie 'm' is defined twice, differently",
    ),
    (
        "tie never defined",
        dict(stages=[{"depth": 1, "embed_dim": 16, "mlp_ratio": {"tie": "m"}}]),
        r"refers to tie 'm', which no knob defines",
    ),
    ("flops min above max", dict(constraints={"flops": ["2G", "1G"]}), r"has min above max"),
    ("bad count", dict(constraints={"flops": ["lots", "1G"]}), r"'lots' is not a count such as 300M"),
    ("unknown network field", dict(network={"num_clases": 3}), r"unknown network field\(s\) \['num_clases'\]"),
    ("bad network value", dict(network={"drop_path_rate": 2}), r"network.drop_path_rate = 2"),
    (
        "infinite layer scale",  # a field without constraints of its own: the specs' finiteness still holds
        dict(network={"layer_scale_init_value": "-inf"}),
        r"network.layer_scale_init_value = '-inf': Input should be a finite number",
    ),
    ("unknown top-level field", dict(budget=3), r"budget = 3: unknown field"),
    ("no stages", dict(stages=[]), r"a space needs at least one stage"),
    ("bad train recipe", dict(train={"batch_size": 1}), r"train.batch_size = 1"),
]


@pytest.mark.parametrize("what,changes,message", BAD, ids=[b[0] for b in BAD])
def test_bad_space_files_get_clear_errors(what, changes, message, tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space_dict(**changes)))
    with pytest.raises(SpaceError, match=r"(?s)invalid space file .*space.yaml.*" + message):
        load_space(path)


def test_every_network_field_can_be_set_by_a_space():
    space = SearchSpace.model_validate(space_dict(network={"layer_scale_init_value": 1e-6, "drop_rate": 0.1}))
    spec = space.random_specs(1, seed=0)[0]
    assert spec.layer_scale_init_value == 1e-6 and spec.drop_rate == 0.1


def test_unreadable_space_files(tmp_path):
    with pytest.raises(SpaceError, match="cannot read space file"):
        load_space(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(tmp_path / "bad.yaml")


def test_impossible_constraints_are_refused_before_any_trial():
    space = SearchSpace.model_validate(space_dict(constraints={"image_size": 32, "flops": ["1G", "2G"]}))
    with pytest.raises(
        SpaceError,
        match=r"none of 2,002 specs drawn meets the constraints \(at 32x32, FLOPs in \[1G, 2G\]\).*FLOPs seen",
    ):
        space.check()
    assert space.with_flops(flops_min=0).check().feasible > 0


def test_a_space_without_an_image_size_describes_and_writes_its_constraints():
    space = SearchSpace.model_validate(space_dict(constraints={"flops": ["1G", "2G"]}))
    with pytest.raises(SpaceError, match=r"meets the constraints \(at 224x224, FLOPs in \[1G, 2G\]\)"):
        space.check()
    assert space_data(space)["constraints"]["image_size"] == 224
    # the default takes the stored form, so that a study made from this space resumes (it did not)
    assert space.constraints.image_size == (224, 224)
    assert SearchSpace.model_validate(space.model_dump(mode="json")) == space


@pytest.mark.parametrize(
    "text,count",
    [("300M", 300_000_000), ("0.5G", 500_000_000), ("2.5k", 2500), ("1e9", 1_000_000_000), (1234, 1234), ("7", 7)],
)
def test_parse_count(text, count):
    assert parse_count(text) == count


def test_specs_from_a_space_round_trip():
    spec = load_space("tiny_cpu").random_specs(1, seed=5)[0]
    assert NetworkSpec.from_yaml(spec.to_yaml()) == spec


def test_space_command_prints_parameters_and_acceptance():
    from typer.testing import CliRunner

    from xnetspace.cli import app

    result = CliRunner().invoke(app, ["space", "tiny_cpu", "--draws", "200", "--in-chans", "1"])
    assert result.exit_code == 0, result.output
    assert "parameters (30): stage1.attn_ratio" in result.output and "within budget" in result.output
    bad = CliRunner().invoke(app, ["space", "nowhere.yaml"])
    assert bad.exit_code == 2 and "cannot read space file" in bad.output


def test_a_network_field_given_choices_is_searched_and_fixed_ones_reach_the_baseline():
    """stem_stride (issue 29) as a knob: network.stem_stride, its draws, refine's fix, the baseline."""
    from xnetspace.search.confirmation import baseline_spec
    from xnetspace.search.refine_constraints import set_param

    space = SearchSpace.model_validate(space_dict(network={"stem_stride": [1, 2, 4], "drop_path_rate": 0.0}))
    assert "network.stem_stride" in space.param_names()
    specs = space.random_specs(40, seed=0, feasible_only=False)
    assert {s.stem_stride for s in specs} == {1, 2, 4}
    assert all(s.stage_sizes(32)[0] == (32 // s.stem_stride,) * 2 for s in specs)
    assert space.fixed_network == {"drop_path_rate": 0.0}
    data = space_data(space)
    set_param(data, "network.stem_stride", 2)
    fixed = SearchSpace.model_validate(data)
    assert "network.stem_stride" not in fixed.param_names() and fixed.network["stem_stride"] == 2
    assert {s.stem_stride for s in fixed.random_specs(5, seed=0, feasible_only=False)} == {2}
    wide = space_dict(network={"stem_stride": 2}, constraints={"image_size": 32, "flops": ["1M", "20M"]})
    assert baseline_spec("transxnet_t", SearchSpace.model_validate(wide), 10, 3).stem_stride == 2


@pytest.mark.parametrize(
    "network, says", [({"stem_stride": [2, 3]}, "stem_stride = 3"), ({"stem_stride": []}, "empty")]
)
def test_a_network_choice_that_is_no_valid_value_is_refused_at_load(network, says):
    with pytest.raises(ValueError, match=says):
        SearchSpace.model_validate(space_dict(network=network))
