"""The command line: tables, JSON, checkpoints, and exit status 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from xnetspace.cli import app

from .conftest import release_state_dict

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args))


@pytest.mark.slow
def test_build_preset_prints_the_stage_table_and_top5():
    result = _run("build", "transxnet_t")
    assert result.exit_code == 0, result.output
    out = result.output
    for text in (
        "transxnet_t at 224x224: 12,834,808 params, 1.846 GFLOPs",
        "stage3",
        "14x14",
        "4,889,612",
        "output shape: (1, 1000)",
        "top-5: class",
    ):
        assert text in out, out


@pytest.mark.slow
def test_build_is_reproducible_and_seeded():
    first, again = (json.loads(_run("build", "transxnet_t", "--json", "--image-size", "64").output) for _ in range(2))
    other = json.loads(_run("build", "transxnet_t", "--json", "--image-size", "64", "--seed", "1").output)
    assert first["top5"] == again["top5"] and first["top5"] != other["top5"]


@pytest.mark.slow
def test_build_json_report(tmp_path):
    result = _run("build", "presets/transxnet_s.yaml", "--json", "--image-size", "97x131")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["params"] == 26_864_068 and data["image_size"] == [97, 131]
    assert data["output_shape"] == [1, 1000] and len(data["top5"]) == 5
    assert [s["stage"]["depth"] for s in data["stages"]] == [4, 4, 12, 4]
    assert data["stages"][0]["resolution"] == [25, 33]
    probs = [t["prob"] for t in data["top5"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1


@pytest.mark.slow
def test_build_other_image_checkpoint_and_save(tmp_path):
    image = tmp_path / "grey.png"
    Image.fromarray((np.random.default_rng(0).random((50, 70, 3)) * 255).astype("uint8")).save(image)
    release = tmp_path / "transx-t.pth.tar"
    torch.save({"state_dict": release_state_dict("t")}, release)
    saved = tmp_path / "mine.pt"
    result = _run(
        "build",
        "transxnet_t",
        "--image",
        str(image),
        "--checkpoint",
        str(release),
        "--save",
        str(saved),
        "--json",
        "--image-size",
        "128",
    )
    assert result.exit_code == 0, result.output
    first = json.loads(result.output)
    assert first["image"] == str(image) and first["saved"] == str(saved)
    # Our own file carries its spec; loading it back gives the same prediction.
    again = json.loads(
        _run(
            "build", "transxnet_t", "--image", str(image), "--checkpoint", str(saved), "--json", "--image-size", "128"
        ).output
    )
    assert [t["class"] for t in again["top5"]] == [t["class"] for t in first["top5"]]
    assert [t["prob"] for t in again["top5"]] == pytest.approx([t["prob"] for t in first["top5"]])


@pytest.mark.parametrize(
    "args,message",
    [
        (["build", "no_such_preset"], "unknown preset 'no_such_preset'"),
        (["build", "missing.yaml"], "cannot read spec file"),
        (["build", "transxnet_t", "--image-size", "0x4"], "image size"),
        (["build", "transxnet_t", "--checkpoint", "absent.pt"], "no checkpoint file"),
        (["build", "transxnet_t", "--image", "absent.png"], "no image file"),
        (["flops", "bad.yaml"], "stages[0].num_heads = 0"),
    ],
)
def test_bad_input_exits_2_with_a_message(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("stages: [{depth: 1, embed_dim: 8, num_heads: 0}]\n")
    result = _run(*args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_wrong_checkpoint_exits_2_with_offending_keys(tmp_path):
    release = tmp_path / "transx-s.pth.tar"
    torch.save({"state_dict": release_state_dict("s")}, release)
    result = _run("build", "transxnet_t", "--checkpoint", str(release))
    assert result.exit_code == 2 and "shape: stages.0.blocks.0.dpe.weight" in result.output


def test_flops_table_and_json():
    result = _run("flops", "transxnet_b", "--image-size", "224")
    assert result.exit_code == 0 and "8.474 GFLOPs (8.209 in convolutions)" in result.output
    assert "adaptive_avg_pool2d" in result.output
    data = json.loads(_run("flops", "transxnet_t", "--json").output)
    assert data["flops"] == 1_845_581_200 and data["flops_by_kind"]["matmul"] == 55_780_032


@pytest.mark.slow
def test_console_script_runs_and_fails_with_status_2():
    ok = subprocess.run(
        [sys.executable, "-m", "xnetspace.cli", "flops", "transxnet_t", "--json"], capture_output=True, text=True
    )
    assert ok.returncode == 0 and json.loads(ok.stdout)["params"] == 12_834_808
    bad = subprocess.run([sys.executable, "-m", "xnetspace.cli", "build", "nope.yaml"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: cannot read spec file")


# -- a thin command line (issue 21): commands parse, call the library and map its errors --------------
MAX_COMMAND_BODY = 40  # lines of a command function's body, its docstring left out


def command_bodies() -> dict[str, int]:
    """Each ``@app.command()`` function of xnetspace/cli.py -> the lines of its body (ast)."""
    import ast
    from pathlib import Path

    import xnetspace.cli as cli

    tree = ast.parse(Path(cli.__file__).read_text())
    bodies = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any(
            isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "command"
            for d in node.decorator_list
        ):
            statements = node.body
            if (
                statements
                and isinstance(statements[0], ast.Expr)
                and isinstance(statements[0].value, ast.Constant)
                and isinstance(statements[0].value.value, str)
            ):
                statements = statements[1:]  # the docstring
            bodies[node.name] = statements[-1].end_lineno - statements[0].lineno + 1 if statements else 0
    return bodies


def test_every_command_body_is_at_most_40_lines():
    bodies = command_bodies()
    assert {"build", "flops", "search", "fidelity", "prepare", "worker", "analyze", "refine"} <= set(bodies)
    long = {name: n for name, n in bodies.items() if n > MAX_COMMAND_BODY}
    assert not long, f"command bodies over {MAX_COMMAND_BODY} lines (move the policy into the library): {long}"
