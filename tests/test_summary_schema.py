"""``summary.json`` against its exported JSON Schema (docs/schemas/summary.schema.json).

A real file, written by a small study (fake trainer: seconds, no training) with every part a
summary can hold: confirmed candidates, a random fidelity sample, two baselines (a scaled preset
and the best of N random specs), the seed noise and the top-1 separation of a loss study. It is
checked with ``jsonschema`` when that is installed, else with :func:`conforms` (the keywords
Pydantic's schemas use, and a failure on any other so nothing is skipped silently), and always
parsed back into :class:`~xnetspace.search.summary.Summary`. That the exported file is the model's
current schema is tests/test_analysis_score.py's ``test_exported_schemas_are_the_models_current_ones``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from xnetspace.search import RunOptions, StudyConfig, run_search
from xnetspace.search.space import SearchSpace
from xnetspace.search.summary import Summary
from xnetspace.search.train import TrainConfig

from .conftest import use_trainer
from .test_confirmation import SeedTrainer
from .test_search import SPACE

SCHEMA = Path(__file__).resolve().parent.parent / "docs" / "schemas" / "summary.schema.json"
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
_ANNOTATIONS = {"title", "description", "default", "$defs"}


def conforms(value: Any, schema: dict, root: dict, where: str = "$") -> list[str]:
    """The places where ``value`` breaks ``schema`` (a subset of JSON Schema: the keywords of the
    schemas Pydantic writes); any other keyword is a failure, never skipped."""
    unknown = (
        set(schema)
        - _ANNOTATIONS
        - {
            "$ref",
            "anyOf",
            "type",
            "enum",
            "const",
            "properties",
            "required",
            "additionalProperties",
            "items",
            "minItems",
            "maxItems",
        }
    )
    if unknown:
        return [f"{where}: schema keywords this check does not know: {sorted(unknown)}"]
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        return conforms(value, root["$defs"][name], root, where)
    if "anyOf" in schema:
        tries = [conforms(value, option, root, where) for option in schema["anyOf"]]
        return [] if any(not t for t in tries) else [f"{where}: matches none of anyOf: {tries}"]
    problems = []
    kind = schema.get("type")
    if kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = kind is None or isinstance(value, _TYPES[kind])
    if not ok:
        return [f"{where}: {value!r} is not of type {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: {value!r} not in {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        problems.append(f"{where}: {value!r} is not {schema['const']!r}")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        problems += [f"{where}: {name!r} is required" for name in schema.get("required", []) if name not in value]
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                problems += conforms(item, properties[name], root, f"{where}.{name}")
            elif extra is False:
                problems.append(f"{where}: {name!r} is not allowed")
            elif isinstance(extra, dict):
                problems += conforms(item, extra, root, f"{where}.{name}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            problems.append(
                f"{where}: {len(value)} items, outside [{schema.get('minItems')}, {schema.get('maxItems')}]"
            )
        for i, item in enumerate(value):
            problems += conforms(item, schema.get("items", {}), root, f"{where}[{i}]")
    return problems


def test_the_subset_check_finds_what_breaks_a_schema():
    schema = json.loads(SCHEMA.read_text())
    good = {"name": "loss", "unit": "nats", "direction": "minimize"}
    score = schema["$defs"]["ScoreInfo"]
    assert conforms(good, score, schema) == []
    assert conforms({**good, "unit": "%%"}, score, schema)  # not in the enum
    assert conforms({**good, "extra": 1}, score, schema)  # unknown field
    assert conforms({"name": "loss"}, score, schema)  # required fields missing
    assert conforms({"a": 1}, {"not": {}}, schema)  # a keyword the check does not know fails


@pytest.fixture(scope="module")
def summary_file(tmp_path_factory) -> Path:
    monkeypatch = pytest.MonkeyPatch()
    use_trainer(monkeypatch, SeedTrainer())
    try:
        out = tmp_path_factory.mktemp("summary") / "out"
        config = StudyConfig(
            space=SearchSpace.model_validate(SPACE),
            dataset="synthetic:128",
            objective="loss",
            train=TrainConfig(image_size=16, epochs=2, batch_size=32),
        )
        options = RunOptions(
            n_trials=6,
            out=out,
            study_name="s",
            progress=False,
            heartbeat=1,
            workers_per_device=1,
            sampler="random",
            pruner="none",
            confirm_top=2,
            confirm_seeds=2,
            confirm_epochs=2,
            fidelity_sample=2,
            baseline="transxnet_t,random:3",
        )
        run_search(config, options)
    finally:
        monkeypatch.undo()
    return out / "summary.json"


@pytest.mark.slow
def test_a_real_summary_meets_the_exported_schema(summary_file):
    summary = json.loads(summary_file.read_text())
    # every part the test means to cover is there, so the check below is not of an empty file
    assert len(summary["candidates"]) == 2 and len(summary["fidelity_sample"]) == 2
    first, second = summary["baselines"]
    assert first["name"].startswith("transxnet_t_x") and second["name"].startswith("best of random:3")
    assert summary["best"] and summary["difference"] and summary["separation_top1"]
    schema = json.loads(SCHEMA.read_text())
    try:
        import jsonschema
    except ImportError:
        jsonschema = None
    if jsonschema is not None:
        jsonschema.validate(summary, schema)
    assert conforms(summary, schema, schema) == []
    Summary.model_validate_json(summary_file.read_text())  # and the model it is exported from takes it
