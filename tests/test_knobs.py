"""One knob, two rooms (issue 32): every StageSpec field is read by one operator, which takes it
from the stage itself (``knobs(stage)``), and changes the stage's cost unless it is declared
cost-free. What the search and the build table treat specially comes from the fields' metadata."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from xnetspace.model.block import TransXNetStage
from xnetspace.model.ffn import MSFFN
from xnetspace.model.idconv import IDConv
from xnetspace.model.mixer import DMixer, SqueezedTokenEnhancer
from xnetspace.model.osra import OSRA
from xnetspace.search.space_knobs import FLOAT_KNOBS, INT_KNOBS, KNOBS
from xnetspace.search.space_rules import MONOTONE_KNOBS, SCHEDULE_KNOBS
from xnetspace.spec import StageSpec, stage_knob, stage_knobs

BASE = StageSpec(depth=2, embed_dim=64, num_heads=2, sr_ratio=2, idconv_kernel_size=5, mlp_ratio=3.0)
HW = (14, 14)
READERS = {
    "idconv": IDConv.knobs,
    "osra": OSRA.knobs,
    "ffn": MSFFN.knobs,
    "ste": SqueezedTokenEnhancer.knobs,
    "mixer": DMixer.knobs,
}


def changed(knob: str) -> StageSpec:
    """BASE with ``knob`` moved to another valid value (the first candidate that validates)."""
    value = getattr(BASE, knob)
    if isinstance(value, tuple):
        tries: list = [value[:-1], (*value, 9)]
    elif isinstance(value, float):
        tries = [value / 2, value + 0.25]
    else:
        tries = [value + 1, value * 2, value + 2, value - 1]
    for v in tries:
        try:
            return StageSpec.model_validate({**BASE.model_dump(), knob: v})
        except ValidationError:
            continue
    raise AssertionError(f"no other valid value of {knob} found near {value!r}")


def stage_cost(stage: StageSpec) -> tuple[int, int, int]:
    cost = TransXNetStage.cost(HW, HW, None, stage, None)
    return cost.flops, cost.params, cost.activations


@pytest.mark.parametrize("knob", stage_knobs())
def test_every_stage_field_changes_the_cost_of_the_operator_that_reads_it(knob):
    meta = stage_knob(knob)
    other = changed(knob)
    if meta.operator in READERS:  # the operator named in the metadata reads it from the stage itself
        assert READERS[meta.operator](other) != READERS[meta.operator](BASE), knob
    if meta.cost_free:
        assert stage_cost(other) == stage_cost(BASE), f"{knob} is declared cost-free but changes the cost"
    else:
        assert stage_cost(other) != stage_cost(BASE), f"{knob} changes no cost: declare it cost_free or use it"


def test_every_stage_field_has_its_metadata():
    assert set(stage_knobs()) == set(StageSpec.model_fields)
    assert KNOBS == stage_knobs()
    for knob in stage_knobs():
        meta = stage_knob(knob)
        assert meta.operator in {"stage", *READERS}, (knob, meta.operator)
        assert dataclasses.is_dataclass(meta)


def test_the_search_halfs_knob_sets_come_from_the_fields():
    assert SCHEDULE_KNOBS == stage_knobs(schedulable=True)
    assert set(SCHEDULE_KNOBS) == {"num_heads", "sr_ratio", "idconv_groups", "mlp_ratio", "attn_ratio"}
    assert FLOAT_KNOBS == {"mlp_ratio", "attn_ratio"}
    assert set(MONOTONE_KNOBS) == INT_KNOBS | FLOAT_KNOBS
    assert "ffn_kernel_sizes" not in MONOTONE_KNOBS
