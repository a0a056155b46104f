"""The latency table (issue 33): the operator walk mirrors the inference form exactly, each
operator runs alone at its shape, the prediction is the table's sum along the spec (with each
kind's line for shapes it lacks), and tables are read, refused and resumed with clear errors."""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from xnetspace.cli import app
from xnetspace.cost import count_flops
from xnetspace.latency_table import (
    OPERATOR_KINDS,
    LatencyTable,
    LatencyTableError,
    fill_table,
    network_operators,
    open_table,
    predict_latency,
    read_table,
)
from xnetspace.model import build_model
from xnetspace.model.ffn import FusedMSFFN
from xnetspace.model.idconv import FusedIDConv
from xnetspace.model.mixer import FusedSTE
from xnetspace.model.osra import FusedOSRA
from xnetspace.spec import NetworkSpec, load_preset

runner = CliRunner()

SMALL = NetworkSpec.model_validate(
    {
        "name": "small",
        "in_chans": 1,
        "num_classes": 10,
        "image_size": 28,
        "stages": [
            {"depth": 2, "embed_dim": 16, "num_heads": 1, "sr_ratio": 2, "attn_ratio": 0.25},
            {"depth": 1, "embed_dim": 32, "num_heads": 2, "sr_ratio": 1, "idconv_groups": 1},
            {"depth": 1, "embed_dim": 48, "num_heads": 2, "attn_ratio": 1.0},
        ],
    }
)
# An 8x8 two-stage space (as test_bench's TINY), for the command line.
SPACE = {
    "name": "lat4",
    "network": {"image_size": 8},
    "stage_defaults": {"depth": 1, "mlp_ratio": 1},
    "stages": [{"embed_dim": [8, 16], "sr_ratio": 2}, {"embed_dim": 16, "num_heads": [1, 2]}],
    "constraints": {"image_size": 8, "flops": [0, "200k"]},
}


@pytest.mark.parametrize("spec", [SMALL, "transxnet_t"])
def test_operator_flops_sum_to_the_cost_model(spec):
    """The walk visits every operator once: their FLOPs add up to fvcore's count of the network
    (without layer scales, which the inference form folds away and no operator of the table runs)."""
    spec = load_preset(spec) if isinstance(spec, str) else spec
    size = 224 if spec.name == "transxnet_t" else 28
    spec = spec.model_copy(update={"layer_scale_init_value": None})
    assert sum(op.flops for op in network_operators(spec, size)) == count_flops(spec, size)


def test_operators_are_the_inference_forms_modules():
    """As many operators of each kind as the reparameterised network has modules of that class."""
    model = build_model(SMALL).reparameterize()
    modules = Counter(type(m) for m in model.modules())
    kinds = Counter(op.kind for op in network_operators(SMALL))
    assert kinds["osra"] == modules[FusedOSRA] == 4  # stage 2's attention share 0.25 of 32, stage 3 all
    assert kinds["idconv"] == 3 and modules[FusedIDConv] == 2  # stage 2's one group: a static depthwise conv
    assert kinds["ste"] == modules[FusedSTE] == kinds["msffn"] == modules[FusedMSFFN] == kinds["wiring"] == 4
    assert kinds["group_norm"] == modules[nn.GroupNorm] - 1 == 2 * 4  # the head's own norm is timed with it
    assert kinds["downsample"] == 2 and kinds["stem"] == kinds["head"] == 1


def test_each_operator_runs_alone_at_its_shape():
    for op in network_operators(SMALL):
        module = op.build()
        with torch.inference_mode():
            out = module(*op.inputs(2, torch.device("cpu"), torch.float32))
        assert out.shape[0] == 2
        if op.kind not in ("stem", "downsample", "head"):
            assert tuple(out.shape[1:]) == op.shape, op.key


def _table(**us_by_kind: float) -> LatencyTable:
    """A table with every operator of SMALL at a fixed time per kind."""
    table = LatencyTable("cpu", "test cpu")
    for op in network_operators(SMALL):
        us = us_by_kind.get(op.kind, 1.0)
        table.entries[op.key] = dict(kind=op.kind, flops=op.flops, us=us, samples={"net": [us]})
    return table


def test_prediction_sums_the_table_along_the_spec():
    ops = network_operators(SMALL)
    table = _table(osra=10.0, msffn=100.0)
    expected = sum(10.0 if o.kind == "osra" else 100.0 if o.kind == "msffn" else 1.0 for o in ops)
    prediction = table.predict(SMALL)
    assert predict_latency(SMALL, table) == pytest.approx(expected)
    assert prediction.by_kind["msffn"] == 400.0 and not prediction.unseen


def test_unseen_shapes_take_their_kinds_line():
    table = LatencyTable("cpu", "test cpu")
    ops = network_operators(SMALL)
    stem = next(o for o in ops if o.kind == "stem")
    for flops, us in ((1000, 12.0), (3000, 16.0)):  # us = 10 + 0.002 flops
        table.entries[f"stem {flops}"] = dict(kind="stem", flops=flops, us=us, samples={"net": [us]})
    assert table.fallback(stem) == pytest.approx(10 + 0.002 * stem.flops)
    with pytest.raises(LatencyTableError, match="'dpe' operator"):
        table.predict(SMALL)  # no dpe entry at all: nothing to draw a line through


def test_fill_times_each_round_once_and_resumes(tmp_path):
    path = tmp_path / "table.json"
    other = SMALL.model_copy(update={"layer_scale_init_value": None})  # the same operators but the wiring
    networks = [(SMALL.digest(), network_operators(SMALL)), (other.digest(), network_operators(other))]
    assert fill_table(open_table(path, repeats=2), networks[:1], 2, save=lambda t: t.save(path)) == 2
    table = open_table(path, repeats=2)
    assert fill_table(table, networks, 2, save=lambda t: t.save(path)) == 2  # the other's two rounds
    table = read_table(path)
    assert table.networks == {SMALL.digest(): 2, other.digest(): 2} and fill_table(table, networks, 2) == 0
    stem = table.entries[network_operators(SMALL)[0].key]
    assert stem["samples"].keys() == {SMALL.digest(), other.digest()}
    assert stem["us"] == pytest.approx(statistics.median(t for v in stem["samples"].values() for t in v))
    norm = table.entries[next(o.key for o in network_operators(SMALL) if o.kind == "group_norm" and o.shape[0] == 16)]
    assert [len(v) for v in norm["samples"].values()] == [4, 4]  # two norms per block, two blocks
    assert not table.predict(SMALL).unseen and not table.predict(other).unseen


def test_each_occurrence_keeps_its_fastest_round():
    table = LatencyTable("cpu", "test cpu")
    ops = network_operators(SMALL)
    second_dpe = [k for k, op in enumerate(ops) if op.kind == "dpe"][1]  # stage 1's second block
    table.add("net", ops, [10.0] * len(ops))
    table.add("net", ops, [5.0 if k == second_dpe else 20.0 for k in range(len(ops))])
    stem = table.entries[ops[0].key]
    assert stem["samples"] == {"net": [10.0]} and stem["us"] == 10.0 and table.networks == {"net": 2}
    assert table.entries[ops[second_dpe].key]["samples"]["net"] == [10.0, 5.0]


def test_a_table_timed_elsewhere_is_refused(tmp_path):
    path = tmp_path / "table.json"
    LatencyTable("cpu", "another cpu", threads=1).save(path)
    with pytest.raises(LatencyTableError, match="device_name='another cpu'"):
        open_table(path)
    with pytest.raises(ValueError, match="--threads 0"):
        open_table(tmp_path / "new.json", threads=0)


HEADER = (
    '"format": 1, "device": "cpu", "device_name": "x", "batch_size": 1, "threads": 1, "dtype": "float32", "repeats": 2'
)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("not json", "cannot read latency table"),
        ("{" + HEADER.replace('"format": 1', '"format": 2') + "}", "format = 2"),
        ("{" + HEADER + ', "entries": []}', "entries = []"),
        (
            "{" + HEADER + ', "entries": {"k": {"kind": "stem", "flops": 1, "us": -1, "samples": {}}}}',
            "entries.k.us = -1",
        ),
        (
            "{" + HEADER + ', "entries": {"k": {"kind": "conv", "flops": 1, "us": 1, "samples": {}}}}',
            "entries.k.kind = 'conv'",
        ),
        (
            "{" + HEADER + ', "entries": {"k": {"kind": "stem", "flops": 1, "us": 1, "samples": [1]}}}',
            "entries.k.samples",
        ),
        ("{" + HEADER.replace(', "threads": 1', "") + "}", "threads: Field required"),
    ],
)
def test_bad_tables_are_named(tmp_path, text, field):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(LatencyTableError, match=re.escape(field)):
        read_table(path)


def test_latency_table_command(tmp_path):
    space = tmp_path / "lat4.json"
    space.write_text(json.dumps(SPACE))
    out = tmp_path / "t.json"
    args = ["latency-table", str(space), "--specs", "2", "--repeats", "2", "--rounds", "2", "--out", str(out)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    table = read_table(out)
    assert {e["kind"] for e in table.entries.values()} <= set(OPERATOR_KINDS) and table.threads == 1
    assert list(table.networks.values()) == [2, 2]
    second = runner.invoke(app, args)
    assert "(0 network rounds now)" in second.output
    bad = runner.invoke(app, [*args[:-2], "--device", "tpu", "--out", str(tmp_path / "x.json")])
    assert bad.exit_code == 2 and "device 'tpu' must be cpu, cuda or cuda:K" in bad.output
