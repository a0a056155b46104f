"""Hostile input through the real command line (issue 13): every case answers at once with exit
status 2 (130 for Ctrl-C), one short paragraph naming the field or file, no traceback, and
nothing written or lost. Plus the memory estimate against a measured forward, the internal-error
handler, and random spec mappings (hypothesis) that never raise anything but the documented errors.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
import types
import zlib
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from typer.testing import CliRunner

import xnetspace.cli as cli
import xnetspace.timing as timing
from xnetspace.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from xnetspace.cli import app
from xnetspace.memory import check_memory, estimate_memory
from xnetspace.memory_limit import MemoryLimitError
from xnetspace.model import build_model
from xnetspace.spec import MAX_EMBED_DIM, NetworkSpec, SpecError, StageSpec, format_validation_error, load_preset
from xnetspace.text import yaml_mapping
from xnetspace.timing import Speed, TimeLimitError, check_time, estimate_seconds, measure_speed

from .conftest import random_specs

runner = CliRunner()
MAX_OUTPUT = 3500  # characters: one paragraph (the CLI caps a message at 3,000), or the per-stage table
MAX_SECONDS = 5.0  # per case, in process (imports excluded); the issue asks for well under 10 s

OK_SPEC = (
    "name: ok\nnum_classes: 10\nstages:\n  - {depth: 1, embed_dim: 16, num_heads: 1, sr_ratio: 2}\n"
    "  - {depth: 1, embed_dim: 32, num_heads: 2}\n"
)
STAGE = "{depth: 1, embed_dim: 16}"


def _laughs(top: str) -> str:
    """A "billion laughs" YAML file: anchors nested 7 deep, 9^7 = 4.8 million strings once expanded."""
    lines, prev = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'], "a"
    for name in "bcdefg":
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
        prev = name
    return "\n".join(lines) + f"\n{top}: *g\n"


def _png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height pixels (a decompression bomb) with one tiny row."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4)) + chunk(b"IEND", b"")


def _files(tmp: Path) -> dict[str, str]:
    """Every file under ``tmp`` with the hash of its bytes (what 'nothing written or lost' compares)."""
    return {
        str(p.relative_to(tmp)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(tmp.rglob("*"))
        if p.is_file()
    }


def _write_inputs(tmp: Path) -> None:
    """The hostile files the cases below name (all small on disk; /dev/zero is the system's)."""
    (tmp / "ok.yaml").write_text(OK_SPEC)
    (tmp / "tiny.yaml").write_text(TINY)
    files = {
        "depth.yaml": "stages: [{depth: 1000000000, embed_dim: 16}]\n",
        "wide.yaml": "stages: [{depth: 1, embed_dim: 10000000}]\n",
        "inf.yaml": f"stages: [{STAGE}]\nlayer_scale_init_value: .inf\n",
        "nan.yaml": f"stages: [{STAGE}]\nlayer_scale_init_value: .nan\n",
        "ninf.yaml": f"stages: [{STAGE}]\ndrop_path_rate: -.inf\n",
        "mlp.yaml": "stages: [{depth: 1, embed_dim: 16, mlp_ratio: 1.0e+308}]\n",
        "laughs.yaml": _laughs("stages"),
        "recursive.yaml": "a: &a [*a]\nstages: *a\n",
        "stages17.yaml": "stages: [" + ", ".join([STAGE] * 17) + "]\n",
        "kernels.yaml": "stages: [{depth: 1, embed_dim: 16, ffn_kernel_sizes: [" + ",".join(["1"] * 50_000) + "]}]\n",
        "big.yaml": f"stages: [{STAGE}]\n" + "#" * (1 << 20) + "\n",
        "digits.yaml": "stages: [{depth: 1" + "0" * 5000 + ", embed_dim: 16}]\n",
        "longkey.yaml": f"stages: [{STAGE}]\n? " + "k" * 10_000 + "\n: 1\n",  # explicit key: no length limit
        "longname.yaml": f"stages: [{STAGE}]\nname: " + "n" * 500_000 + "\n",
        "escape.yaml": f'stages: [{STAGE}]\nname: "\\e[31mred\\e[0m"\n',
        "nested.yaml": "stages: " + "[" * 5000 + "]" * 5000 + "\n",
        "nested.json": '{"stages": ' + "[" * 100_000 + "]" * 100_000 + "}",
        "nan.json": '{"stages": [{"depth": 1, "embed_dim": 16}], "drop_rate": NaN}',
        "pyobj.yaml": "stages: !!python/object/apply:os.system ['echo pwned']\n",
        "list.yaml": "- 1\n- 2\n",
        "classes.yaml": f"stages: [{STAGE}]\nnum_classes: 1000000000000\n",
        "kernel.yaml": "stages: [{depth: 1, embed_dim: 16, idconv_kernel_size: 1000001}]\n",
        "sr.yaml": "stages: [{depth: 1, embed_dim: 16, sr_ratio: 1000000000}]\n",
        "heads.yaml": "stages: [{depth: 1, embed_dim: 16, num_heads: 1000000000}]\n",
        "imagesize.yaml": f"stages: [{STAGE}]\nimage_size: 1000000000\n",
        "inchans.yaml": f"stages: [{STAGE}]\nin_chans: 1000000000\n",
        "twochans.yaml": f"stages: [{STAGE}]\nin_chans: 2\n",
        "huge_in_bounds.yaml": "stages: [" + ", ".join([f"{{depth: 256, embed_dim: {MAX_EMBED_DIM}}}"] * 4) + "]\n",
        "space_laughs.yaml": _laughs("stages"),
        "space_unknown.yaml": "name: x\nstages: [{embed_dim: 16, depth: 1}]\nwarp_drive: 9\n",
        "space_big.yaml": "name: x\n" + "#" * (1 << 20) + "\n",
        "space_range.yaml": "name: x\nstages: [{embed_dim: {low: 64, high: 8}, depth: 1}]\n",
        "space_nan.yaml": "name: x\nstages: [{embed_dim: 16, depth: 1, mlp_ratio: {low: .nan, high: 4}}]\n",
        # issue 22: repeated keys (the last would win silently) and booleans where numbers belong
        "dup_name.yaml": f"name: a\nname: b\nstages: [{STAGE}]\n",
        "dup_stage.yaml": "stages: [{depth: 1, embed_dim: 16, depth: 2}]\n",
        "dup_block.yaml": "stages:\n  - depth: 1\n    embed_dim: 16\n    depth: 4\n",
        "dup_anchor.yaml": "base: &b {depth: 1, depth: 2}\nstages: [*b]\n",
        "dup.json": '{"stages": [{"depth": 1, "embed_dim": 16, "depth": 2}]}',
        "dup_top.json": '{"stages": [{"depth": 1, "embed_dim": 16}], "num_classes": 10, "num_classes": 5}',
        "bool_depth.yaml": "stages: [{depth: true, embed_dim: 16}]\n",
        "bool_classes.yaml": f"stages: [{STAGE}]\nnum_classes: false\n",
        "bool_kernels.yaml": "stages: [{depth: 1, embed_dim: 16, ffn_kernel_sizes: [true, 3]}]\n",
        "bool_scale.yaml": f"stages: [{STAGE}]\nlayer_scale_init_value: true\n",
        "bool_ratio.yaml": "stages: [{depth: 1, embed_dim: 16, mlp_ratio: true}]\n",
        "bool.json": '{"stages": [{"depth": 1, "embed_dim": 16, "num_heads": true}]}',
        "space_dup.yaml": "name: x\nstages:\n  - embed_dim: 16\n    depth: 1\n    embed_dim: [16, 32]\n",
        "space_dup_top.yaml": "name: x\nstages: [{embed_dim: 16, depth: 1}]\nname: y\n",
        "space_bool.yaml": "name: x\nstages: [{embed_dim: 16, depth: true}]\n",
        "space_bool_choice.yaml": "name: x\nstages: [{embed_dim: 16, depth: [1, true]}]\n",
        "space_bool_range.yaml": "name: x\nstages: [{embed_dim: 16, depth: {low: true, high: 3}}]\n",
        "space_bool_train.yaml": "name: x\nstages: [{embed_dim: 16, depth: 1}]\ntrain: {epochs: true}\n",
        "space_bool_size.yaml": (
            "name: x\nstages: [{embed_dim: 16, depth: 1}]\nconstraints: {image_size: [32, false]}\n"
        ),
        "huge_blocks.yaml": "stages: [" + ", ".join(["{depth: 256, embed_dim: 16}"] * 16) + "]\n",
    }
    for name, text in files.items():
        (tmp / name).write_text(text)
    (tmp / "latin1.yaml").write_bytes(b"name: caf\xe9\nstages: [{depth: 1, embed_dim: 16}]\n")
    (tmp / "folder").mkdir()
    (tmp / "random.pt").write_bytes(os.urandom(4096))
    (tmp / "empty.pt").write_bytes(b"")
    torch.save(torch.zeros(3), tmp / "tensor.pt")
    torch.save({"k" * 5000 + str(i): torch.zeros(1) for i in range(50)}, tmp / "longkeys.pt")
    (tmp / "text.png").write_text("not an image")
    (tmp / "bomb.png").write_bytes(_png(100_000, 100_000))
    (tmp / "truncated.png").write_bytes(_png(64, 64)[:40])
    for name, data in _checkpoints().items():
        (tmp / name).write_bytes(data)
    # --save targets that are not regular files, or not writable ones
    os.mkfifo(tmp / "fifo")
    (tmp / "link_full").symlink_to("/dev/full")
    (tmp / "link_folder").symlink_to("folder")
    (tmp / "loop_a").symlink_to("loop_b")
    (tmp / "loop_b").symlink_to("loop_a")
    (tmp / "readonly.pt").write_bytes(b"keep me")
    (tmp / "readonly.pt").chmod(0o444)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp / "sock"))
    (tmp / "one_image" / "cat").mkdir(parents=True)
    (tmp / "one_image" / "cat" / "a.png").write_bytes(_PNG_8X8)
    for cls in ("cat", "dog"):
        (tmp / "one_per_class" / cls).mkdir(parents=True)
        (tmp / "one_per_class" / cls / "a.png").write_bytes(_PNG_8X8)


TINY = "name: tiny\nnum_classes: 10\nimage_size: 32\nstages: [{depth: 1, embed_dim: 16}]\n"


def _png_8x8() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 30, 200)).save(out, format="PNG")
    return out.getvalue()


_PNG_8X8 = _png_8x8()


@functools.cache
def _checkpoints() -> dict[str, bytes]:
    """Checkpoint files of the cases below, made once (bytes): weights of the tiny spec with a
    NaN or an inf, an own-format file whose stored spec is invalid or missing, state dicts whose
    entries are not a name with a tensor, code in torch's legacy (non-zip) format, a cut file."""
    import io

    from xnetspace.checkpoint import FORMAT

    spec = NetworkSpec.from_yaml(TINY)
    torch.manual_seed(0)
    state = build_model(spec).state_dict()
    own = {"format": FORMAT, "spec": spec.model_dump(mode="json"), "state_dict": state}

    def saved(obj, **kwargs) -> bytes:
        out = io.BytesIO()
        torch.save(obj, out, **kwargs)
        return out.getvalue()

    nan = {k: v.clone() for k, v in state.items()}
    nan["stem.conv.weight"][0, 0, 0, 0] = float("nan")
    nan["head.fc.bias"][3] = float("inf")
    inf = {k: v.clone() for k, v in state.items()}
    inf["stages.0.blocks.0.dpe.weight"].fill_(float("-inf"))
    good = saved(own)
    return {
        "tiny.pt": good,
        "nan.pt": saved({**own, "state_dict": nan}),
        "inf.pt": saved({**own, "state_dict": inf}),
        "badspec.pt": saved({**own, "spec": {**own["spec"], "stages": []}}),
        "nospec.pt": saved({"format": FORMAT, "state_dict": state}),
        "number.pt": saved({"stem.conv.weight": 5}),
        "intkey.pt": saved({1: torch.zeros(1)}),
        "legacy_pickled.pt": saved({"state_dict": Pickled()}, _use_new_zipfile_serialization=False),
        "cut.pt": good[: len(good) // 2],
    }


class Pickled:  # a checkpoint that would run code when unpickled without weights_only
    def __reduce__(self):
        return (os.system, ("echo pwned",))


# (args, texts the message must contain); each runs in a folder holding the files above.
CASES = [
    # -- the issue's table ------------------------------------------------------------------------
    (["build", "depth.yaml"], ["stages[0].depth", "256"]),
    (["build", "wide.yaml"], ["stages[0].embed_dim", "16384"]),
    (["flops", "wide.yaml"], ["stages[0].embed_dim"]),
    (["build", "ok.yaml", "--image-size", "99999"], ["--image-size", "16384"]),
    (["build", "inf.yaml"], ["layer_scale_init_value", "finite"]),
    (["build", "laughs.yaml"], ["laughs.yaml", "100,000 YAML values"]),
    # -- spec files -------------------------------------------------------------------------------
    (["build", "nan.yaml"], ["layer_scale_init_value", "finite"]),
    (["flops", "ninf.yaml"], ["drop_path_rate"]),
    (["flops", "mlp.yaml"], ["stages[0].mlp_ratio", "64"]),
    (["flops", "recursive.yaml"], ["recursive.yaml", "recursive"]),
    (["flops", "stages17.yaml"], ["stages", "at most 16"]),
    (["flops", "kernels.yaml"], ["ffn_kernel_sizes", "50,000"]),
    (["flops", "big.yaml"], ["big.yaml", "larger than"]),
    (["build", "/dev/zero"], ["/dev/zero", "not a regular file"]),
    (["flops", "folder"], ["folder", "not a regular file"]),
    (["flops", "latin1.yaml"], ["latin1.yaml", "UTF-8"]),
    (["flops", "digits.yaml"], ["digits.yaml", "digits"]),
    (["flops", "longkey.yaml"], ["unknown field", "kkkk"]),
    (["flops", "longname.yaml"], ["name", "nnnn..."]),
    (["flops", "escape.yaml"], ["name", "printable"]),
    (["flops", "nested.yaml"], ["nested.yaml"]),
    (["flops", "nested.json"], ["nested.json", "JSON"]),
    (["flops", "nan.json"], ["drop_rate", "finite"]),
    (["flops", "pyobj.yaml"], ["pyobj.yaml", "not valid YAML"]),
    (["flops", "list.yaml"], ["list.yaml", "mapping"]),
    (["flops", "classes.yaml"], ["num_classes"]),
    (["flops", "kernel.yaml"], ["idconv_kernel_size", "31"]),
    (["flops", "sr.yaml"], ["sr_ratio", "64"]),
    (["flops", "heads.yaml"], ["num_heads", "1024"]),
    (["flops", "imagesize.yaml"], ["image_size", "16384"]),
    (["flops", "inchans.yaml"], ["in_chans", "4096"]),
    (["build", "huge_in_bounds.yaml"], ["would need about", "TB", "available", "--force"]),
    (["build", "transxnet_t", "--image-size", "8192"], ["would need about", "forward at 8192x8192", "--force"]),
    (["flops", "x" * 5000], ["unknown preset", "xxx..."]),
    (["flops", "nul\0name"], ["unknown preset"]),
    (["flops", "../spaces/tiny_cpu"], ["unknown preset"]),
    # -- options ----------------------------------------------------------------------------------
    (["flops", "ok.yaml", "--image-size", "9" * 5000], ["--image-size"]),
    (["flops", "ok.yaml", "--image-size", "abc"], ["image size 'abc'"]),
    (["flops", "ok.yaml", "--image-size", "-5"], ["image size"]),
    (["flops", "ok.yaml", "--image-size", "2x3x4"], ["image size"]),
    (["build", "ok.yaml", "--seed", "many"], ["--seed"]),
    (["build", "ok.yaml", "--no-such-option"], ["--no-such-option"]),
    (["space", "tiny_cpu", "--draws", "0"], ["--draws"]),
    (["space", "tiny_cpu", "--draws", "1000000000000"], ["--draws"]),
    (["space", "tiny_cpu", "--num-classes", "-1"], ["--num-classes"]),
    (["space", "tiny_cpu", "--in-chans", "0"], ["--in-chans"]),
    (["build", "ok.yaml", "--save", "/dev/null/net.pt"], ["cannot save", "/dev/null/net.pt"]),
    (["build", "ok.yaml", "--save", "folder"], ["cannot save", "folder", "is a folder"]),
    # -- --save onto what is not a regular file (issue 22): refused before anything is built --------
    (["build", "ok.yaml", "--save", "/dev/full"], ["cannot save", "'/dev/full'", "character device"]),
    (["build", "ok.yaml", "--save", "link_full"], ["cannot save", "'link_full'", "character device", "/dev/full"]),
    (["build", "ok.yaml", "--save", "fifo"], ["cannot save", "'fifo'", "FIFO"]),
    (["build", "ok.yaml", "--save", "sock"], ["cannot save", "'sock'", "socket"]),
    (["build", "ok.yaml", "--save", "link_folder"], ["cannot save", "'link_folder'", "folder"]),
    (["build", "ok.yaml", "--save", "."], ["cannot save", "'.'", "folder"]),
    (["build", "ok.yaml", "--save", ""], ["--save", "empty"]),
    (["build", "ok.yaml", "--save", "/proc/x.pt"], ["cannot save", "/proc/x.pt", "'/proc'"]),
    (["build", "ok.yaml", "--save", "nul\0name.pt"], ["--save", "NUL byte"]),
    (["build", "ok.yaml", "--save", "loop_a"], ["cannot save", "loop_a"]),
    (["build", "ok.yaml", "--save", "readonly.pt"], ["cannot save", "readonly.pt", "read-only"]),
    (["build", "ok.yaml", "--save", "n" * 300 + ".pt"], ["cannot save", "nnn...", "too long"]),
    (["build", "ok.yaml", "--save", "/dev/full", "--json"], ["cannot save", "character device"]),
    # -- checkpoints ------------------------------------------------------------------------------
    (["build", "ok.yaml", "--checkpoint", "random.pt"], ["random.pt", "weights-only"]),
    (["build", "ok.yaml", "--checkpoint", "empty.pt"], ["empty.pt"]),
    (["build", "ok.yaml", "--checkpoint", "tensor.pt"], ["tensor.pt", "Tensor"]),
    (
        ["build", "ok.yaml", "--checkpoint", "pickled.pt"],
        ["pickled.pt", "weights-only", "posix.system", "refused unread"],
    ),
    (["build", "ok.yaml", "--checkpoint", "folder"], ["no checkpoint file", "folder"]),
    (["build", "ok.yaml", "--checkpoint", "longkeys.pt"], ["50 keys", "kkkk"]),
    (
        ["build", "tiny.yaml", "--checkpoint", "legacy_pickled.pt"],
        ["legacy_pickled.pt", "weights-only", "posix.system"],
    ),
    (["build", "tiny.yaml", "--checkpoint", "number.pt"], ["'stem.conv.weight' (int)", "not a name with a tensor"]),
    (["build", "tiny.yaml", "--checkpoint", "intkey.pt"], ["1 (Tensor)", "not a name with a tensor"]),
    (["build", "tiny.yaml", "--checkpoint", "cut.pt"], ["cut.pt", "not a weights-only torch checkpoint"]),
    (["build", "tiny.yaml", "--checkpoint", "/dev/zero"], ["/dev/zero", "not a regular file"]),
    (["build", "tiny.yaml", "--checkpoint", "empty.pt"], ["empty.pt", "is empty"]),
    # -- images -----------------------------------------------------------------------------------
    (["build", "ok.yaml", "--image", "text.png"], ["text.png", "not a readable image"]),
    (["build", "ok.yaml", "--image", "bomb.png"], ["bomb.png", "not a readable image"]),
    (["build", "ok.yaml", "--image", "truncated.png"], ["truncated.png", "not a readable image"]),
    (["build", "ok.yaml", "--image", "folder"], ["no image file", "folder"]),
    (["build", "twochans.yaml"], ["in_chans 2"]),
    # -- space files ------------------------------------------------------------------------------
    (["space", "space_laughs.yaml"], ["space_laughs.yaml", "100,000 YAML values"]),
    (["space", "/dev/zero"], ["/dev/zero", "not a regular file"]),
    (["space", "space_unknown.yaml"], ["warp_drive", "unknown field"]),
    (["space", "space_big.yaml"], ["space_big.yaml", "larger than"]),
    (["space", "space_range.yaml"], ["embed_dim", "low 64 is above high 8"]),
    (["space", "space_nan.yaml"], ["mlp_ratio"]),
    (["space", "no_such_space.yaml"], ["no_such_space.yaml"]),
    # -- repeated keys and booleans (issue 22) ----------------------------------------------------
    (["flops", "dup_name.yaml"], ["dup_name.yaml", "repeats the key 'name'", "lines 1 and 2"]),
    (["flops", "dup_stage.yaml"], ["dup_stage.yaml", "repeats the key 'depth'", "line 1"]),
    (["build", "dup_block.yaml"], ["dup_block.yaml", "repeats the key 'depth'", "lines 2 and 4"]),
    (["flops", "dup_anchor.yaml"], ["dup_anchor.yaml", "repeats the key 'depth'"]),
    (["flops", "dup.json"], ["dup.json", "'depth' appears twice"]),
    (["flops", "dup_top.json"], ["dup_top.json", "'num_classes' appears twice"]),
    (["flops", "bool_depth.yaml"], ["stages[0].depth = True", "not the boolean true"]),
    (["flops", "bool_classes.yaml"], ["num_classes = False", "not the boolean false"]),
    (["flops", "bool_kernels.yaml"], ["stages[0].ffn_kernel_sizes[0] = True", "boolean"]),
    (["flops", "bool_scale.yaml"], ["layer_scale_init_value = True", "boolean"]),
    (["flops", "bool_ratio.yaml"], ["stages[0].mlp_ratio = True", "boolean"]),
    (["flops", "bool.json"], ["stages[0].num_heads = True", "boolean"]),
    (["space", "space_dup.yaml"], ["space_dup.yaml", "repeats the key 'embed_dim'", "lines 3 and 5"]),
    (["space", "space_dup_top.yaml"], ["space_dup_top.yaml", "repeats the key 'name'", "lines 1 and 3"]),
    (["space", "space_bool.yaml"], ["depth", "True", "boolean"]),
    (["space", "space_bool_choice.yaml"], ["depth", "True", "boolean"]),
    (["space", "space_bool_range.yaml"], ["depth.low", "boolean"]),
    (["space", "space_bool_train.yaml"], ["train.epochs = True", "boolean"]),
    (["space", "space_bool_size.yaml"], ["constraints.image_size = [32, False]", "not booleans"]),
    # -- analyze (issue 22) -------------------------------------------------------------------------
    (["analyze", "ok.yaml"], ["'ok.yaml' is a file, not a study folder"]),
]

SEARCH = ["search", "--space", "tiny_cpu", "--n-trials", "1", "--out", "run"]
SEARCH_CASES = [
    pytest.param(SEARCH + ["--storage", "foo://bar"], ["--storage", "foo://bar"]),
    pytest.param(SEARCH + ["--storage", "postgresql://u:p@127.0.0.1:1/db"], ["--storage", "127.0.0.1"]),
    pytest.param(SEARCH + ["--dataset", "nosuch"], ["unknown dataset 'nosuch'"]),
    pytest.param(SEARCH + ["--dataset", "imagefolder:/no/such/folder"], ["imagefolder"]),
    pytest.param(SEARCH + ["--dataset", "cifar10:folder"], ["cifar10"]),
    pytest.param(SEARCH + ["--dataset", "synthetic:-5"], ["synthetic", "10 to 1,000,000 samples"]),
    pytest.param(SEARCH + ["--dataset", "synthetic:99999999999"], ["synthetic", "10 to 1,000,000 samples"]),
    pytest.param(SEARCH + ["--dataset", "synthetic:many"], ["synthetic"]),
    pytest.param(SEARCH + ["--space", "/dev/zero"], ["/dev/zero", "not a regular file"]),
    pytest.param(SEARCH + ["--space", "space_laughs.yaml"], ["space_laughs.yaml", "100,000 YAML values"]),
    pytest.param(
        SEARCH + ["--dataset", "imagefolder:one_image"],
        ["imagefolder:one_image", "1 image(s) in 1 class", "at least 3 images in every class", "'cat' has 1"],
    ),
    pytest.param(
        SEARCH + ["--dataset", "imagefolder:one_per_class"],
        ["imagefolder:one_per_class", "2 image(s) in 2 class", "60/20/20", "'dog' has 1"],
    ),
    pytest.param(SEARCH + ["--space", "space_dup.yaml"], ["space_dup.yaml", "repeats the key 'embed_dim'"]),
    pytest.param(SEARCH + ["--latency-table", "none.json"], ["cannot read latency table 'none.json'"]),
    pytest.param(SEARCH + ["--latency-table", "ok.yaml"], ["latency table 'ok.yaml'"]),
    pytest.param(SEARCH + ["--max-latency-ms", "0"], ["max_latency_ms", "greater than 0"]),
    pytest.param(SEARCH + ["--objective", "loss-flops"], ["objective", "loss-latency"]),
]


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_inputs(tmp_path)
    torch.save({"state_dict": Pickled()}, tmp_path / "pickled.pt")
    return tmp_path


def _refused(args: list[str], texts: list[str], folder: Path) -> str:
    before = _files(folder)
    start = time.perf_counter()
    result = runner.invoke(app, args)
    seconds = time.perf_counter() - start
    out = result.output
    assert result.exit_code == 2, f"exit {result.exit_code} ({result.exception!r}): {out[-2000:]}"
    # stdout: nothing, or the table of what the spec alone tells (build prints it before building)
    assert "Traceback" not in out and len(result.stdout) < MAX_OUTPUT and len(result.stderr) < MAX_OUTPUT, out[
        :MAX_OUTPUT
    ]
    err = result.stderr.strip()
    assert err and "\n\n" not in err, err  # one paragraph (or click's usage box for an unknown option)
    assert "weights_only=False" not in out and "weights_only` set to `False" not in out, out
    for text in texts:
        assert text in out, out
    assert seconds < MAX_SECONDS, f"{seconds:.1f} s"
    assert _files(folder) == before, "files were written or changed"
    return out


def _id(args: list[str]) -> str:
    return " ".join(args)[:60].replace("\0", "\\0")


@pytest.mark.parametrize("args,texts", CASES, ids=[_id(c.values[0] if hasattr(c, "values") else c[0]) for c in CASES])
def test_hostile_input_is_refused_fast_and_short(args, texts, hostile):
    _refused(args, texts, hostile)


@pytest.mark.parametrize("args,texts", SEARCH_CASES, ids=[_id(c.values[0][7:]) for c in SEARCH_CASES])
def test_hostile_search_input_is_refused(args, texts, hostile):
    _refused(args, texts, hostile)


def test_billion_laughs_message_is_short_and_quick():
    start = time.perf_counter()
    with pytest.raises(SpecError, match="100,000 YAML values") as err:
        yaml_mapping(_laughs("stages"), "a spec")
    assert time.perf_counter() - start < 0.5 and len(str(err.value)) < 200


def test_rich_markup_in_a_name_is_printed_literally(hostile):
    (hostile / "markup.yaml").write_text(f"name: '[/bold] [red]x'\nstages: [{STAGE}]\n")
    result = runner.invoke(app, ["flops", "markup.yaml"])
    assert result.exit_code == 0 and "[/bold] [red]x at 224x224" in result.output, result.output


def test_failed_save_keeps_the_existing_file(hostile, monkeypatch):
    (hostile / "net.pt").write_bytes(b"precious")

    def disk_full(model, path):
        Path(path).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli, "save_checkpoint", disk_full)
    out = _refused(["build", "ok.yaml", "--save", "net.pt"], ["No space left on device", "net.pt"], hostile)
    assert (hostile / "net.pt").read_bytes() == b"precious" and "Traceback" not in out


# -- --save writes what the path names, and only a regular file (issue 22) ----------------------------
def _kind(path: str) -> str:
    mode = os.lstat(path).st_mode
    return next(
        name
        for test, name in (
            (stat.S_ISLNK, "link"),
            (stat.S_ISCHR, "char"),
            (stat.S_ISFIFO, "fifo"),
            (stat.S_ISSOCK, "socket"),
            (stat.S_ISDIR, "dir"),
            (stat.S_ISREG, "file"),
        )
        if test(mode)
    )


def test_save_never_replaces_a_device_a_fifo_or_a_link(hostile):
    targets = ["/dev/full", "link_full", "fifo", "sock", "link_folder", "loop_a"]
    before = {t: _kind(t) for t in targets}
    assert before["/dev/full"] == "char" and before["link_full"] == "link"
    for target in targets:
        _refused(["build", "tiny.yaml", "--save", target], ["cannot save"], hostile)
    assert {t: _kind(t) for t in targets} == before
    assert os.readlink("link_full") == "/dev/full" and not list(hostile.glob("*.partial"))


def test_save_follows_a_symlink_and_replaces_its_target_atomically(hostile):
    (hostile / "net.pt").write_bytes(b"old")
    (hostile / "link.pt").symlink_to("net.pt")
    (hostile / "dangling.pt").symlink_to("new/net2.pt")
    for link, target in (("link.pt", "net.pt"), ("dangling.pt", "new/net2.pt")):
        result = runner.invoke(app, ["build", "tiny.yaml", "--image-size", "32", "--save", link])
        assert result.exit_code == 0, result.output
        assert f"saved to {link} (the symlink's target, {hostile / target})" in result.output
        assert _kind(link) == "link" and os.readlink(link) == target and _kind(target) == "file"
        assert load_checkpoint(hostile / link).spec == NetworkSpec.from_yaml(TINY)
    assert not [p for p in hostile.rglob("*") if ".partial" in p.name]


def test_a_full_disk_is_an_os_error_not_a_success():
    """A real full device: writing the checkpoint's bytes fails with ENOSPC (torch.save given a
    path would say RuntimeError), and /dev/full stays the device it was."""
    model = build_model(NetworkSpec.from_yaml(TINY))
    with pytest.raises(OSError) as err:
        save_checkpoint(model, "/dev/full")
    assert err.value.errno == 28 and stat.S_ISCHR(os.stat("/dev/full").st_mode)


# -- checkpoints: weights that are not finite, stored specs that are not valid (issue 22) -------------
def test_nan_weights_are_reported_and_listed(hostile):
    result = runner.invoke(app, ["build", "tiny.yaml", "--image-size", "32", "--checkpoint", "nan.pt"])
    assert result.exit_code == 0, result.output
    warning = result.stderr.strip()
    assert warning.count("\n") == 0 and warning.startswith("warning: 2 weight tensors of nan.pt are not finite")
    assert "stem.conv.weight" in warning and "head.fc.bias" in warning and "p = nan" in result.stdout
    result = runner.invoke(app, ["build", "tiny.yaml", "--image-size", "32", "--checkpoint", "inf.pt", "--json"])
    assert result.exit_code == 0 and "warning:" in result.stderr, result.output
    assert json.loads(result.stdout)["nonfinite_weights"] == ["stages.0.blocks.0.dpe.weight"]
    result = runner.invoke(app, ["build", "tiny.yaml", "--image-size", "32", "--checkpoint", "tiny.pt", "--json"])
    assert result.exit_code == 0 and result.stderr == "", result.output
    assert json.loads(result.stdout)["nonfinite_weights"] == []


def test_a_stored_spec_that_is_not_valid_is_a_checkpoint_error(hostile):
    with pytest.raises(
        CheckpointError, match=r"(?s)invalid spec stored in .*badspec.pt .*stages = \[\]: a network needs"
    ):
        load_checkpoint(hostile / "badspec.pt")
    with pytest.raises(CheckpointError, match="holds no spec"):
        load_checkpoint(hostile / "nospec.pt")
    assert load_checkpoint(hostile / "tiny.pt").spec.name == "tiny"


# -- a build that would take minutes is refused after the table, before building (issue 22) ------------
SLOW = Speed(flops_per_second=8e9, block_seconds=0.03)  # measured here with other work on both cores


def test_a_long_build_prints_the_table_then_is_refused(hostile, monkeypatch):
    monkeypatch.setattr(timing, "measure_speed", lambda: SLOW)
    monkeypatch.setattr(cli, "build_model", lambda *a, **k: pytest.fail("built despite the estimate"))
    start = time.perf_counter()
    result = runner.invoke(app, ["build", "huge_blocks.yaml", "--image-size", "32"])
    assert result.exit_code == 2 and time.perf_counter() - start < MAX_SECONDS, result.output
    assert result.stdout.count("│ stage") == 16 and "4,096 blocks" in result.stderr  # the table came first
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in result.output
    assert "would take about 125 s" in err and "60 s limit" in err and "--force" in err
    result = runner.invoke(app, ["build", "huge_blocks.yaml", "--image-size", "32", "--json"])
    assert result.exit_code == 2 and result.stdout == "" and "would take about" in result.stderr


def test_force_skips_the_time_estimate(hostile, monkeypatch):
    monkeypatch.setattr(timing, "measure_speed", lambda: pytest.fail("measured despite --force"))
    result = runner.invoke(app, ["build", "tiny.yaml", "--image-size", "32", "--force", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["output_shape"] == [1, 10], result.output


def test_time_estimate_counts_blocks_and_work():
    spec = NetworkSpec.model_validate({"stages": [{"depth": 256, "embed_dim": 16}] * 16})
    seconds = estimate_seconds(spec, 32, SLOW)
    assert 4096 * 0.03 < seconds < 1.05 * 4096 * 0.03  # block-bound: 0.18 GFLOPs, 38 M parameters
    wide = NetworkSpec.model_validate({"stages": [{"depth": 2, "embed_dim": 256}, {"depth": 2, "embed_dim": 512}]})
    assert estimate_seconds(wide, 448, SLOW) > 126e9 / 8e9  # FLOP-bound: 126 GFLOPs at most 8 GFLOP/s
    with pytest.raises(TimeLimitError, match="would take about"):
        check_time(spec, 32, speed=SLOW)
    assert check_time(spec, 32, limit=1000, speed=SLOW) == seconds


@pytest.mark.slow
def test_time_estimate_against_a_measured_build_and_forward():
    """The estimate against a measured build + forward of a block-bound network (64 blocks),
    within a factor of 5 (the module docstring lists the measured cases). Both are taken three
    times, in turn: the median estimate against the fastest measurement, so that another process's
    burst on the cores during one measurement does not decide the test."""
    spec = NetworkSpec.model_validate({"stages": [{"depth": 4, "embed_dim": 16}] * 16})
    estimates, measured = [], []
    for _ in range(3):
        estimates.append(estimate_seconds(spec, 32, measure_speed()))
        start = time.perf_counter()
        with torch.inference_mode():
            build_model(spec).eval()(torch.randn(1, 3, 32, 32))
        measured.append(time.perf_counter() - start)
    estimate = sorted(estimates)[1]
    assert min(measured) / 5 < estimate < 5 * min(measured), (estimates, measured)


def test_booleans_are_refused_but_whole_floats_and_int_ratios_are_numbers():
    spec = NetworkSpec.model_validate({"stages": [{"depth": 2.0, "embed_dim": 16, "mlp_ratio": 4, "attn_ratio": 1}]})
    assert (spec.stages[0].depth, spec.stages[0].mlp_ratio, spec.stages[0].attn_ratio) == (2, 4.0, 1.0)
    with pytest.raises(ValidationError, match="not the boolean true"):
        StageSpec.model_validate({"depth": 1, "embed_dim": 16, "sr_ratio": True})


def test_a_too_small_image_folder_says_what_the_split_needs(hostile):
    from xnetspace.search.data import DataError, load_dataset

    with pytest.raises(
        DataError, match=r"^imagefolder:one_image: 1 image\(s\) in 1 class folder\(s\) .* at least 3 images in every"
    ):
        load_dataset("imagefolder:one_image", 16)
    with pytest.raises(
        DataError,
        match=(
            r"60/20/20 train/val/test split, which needs at least 3 images in every class "
            r"\('cat' has 1, 'dog' has 1\)"
        ),
    ):
        load_dataset("imagefolder:one_per_class", 16)


# -- analyze: studies a numerical library chokes on (issue 22) -------------------------------------
def _damage_top1(folder: Path, count: int, text: str) -> None:
    """Write ``text`` (NaN, Infinity) over the stored top-1 of the first ``count`` candidates of a
    test_analysis.make_study study, whatever the layout of its user attributes: each candidate's
    top-1 is its trial's value, stored as the same JSON number."""
    import sqlite3

    with sqlite3.connect(folder / "study.db") as con:
        for trial, value in con.execute("select trial_id, value from trial_values order by trial_id").fetchall()[
            :count
        ]:
            number = json.dumps(value)
            changed = con.execute(
                "update trial_user_attributes set value_json = replace(value_json, ?, ?) "
                "where trial_id = ? and instr(value_json, ?) > 0",
                (number, text, trial, number),
            )
            assert changed.rowcount == 1, (trial, number)


@pytest.mark.parametrize(
    "damage,note",
    [
        ("constant", "every candidate has the same error"),
        ("NaN", "1 completed trial(s) have no finite top-1"),
        ("Infinity", "1 completed trial(s) have no finite top-1"),
    ],
)
def test_analyze_never_lets_a_raw_warning_or_traceback_through(tmp_path, monkeypatch, damage, note):
    import dataclasses

    import xnetspace.search.analysis_run as analysis_run

    from .test_analysis import make_study

    monkeypatch.chdir(tmp_path)
    make_study(tmp_path / "a", n=12), make_study(tmp_path / "b", n=12, seed=1)
    if damage == "constant":  # every candidate of both studies at 10 % error: zero variance
        read = analysis_run.study_data  # where xnetspace analyze reads each study

        def constant(*args, **kwargs):
            data = read(*args, **kwargs)
            data.candidates = [dataclasses.replace(c, error=10.0) for c in data.candidates]
            return data

        monkeypatch.setattr(analysis_run, "study_data", constant)
    else:
        _damage_top1(tmp_path / "a", 1, damage)
    result = runner.invoke(app, ["analyze", "a", "b", "--out", "out"])
    assert result.exit_code == 0, result.output
    assert "Warning" not in result.output and "Traceback" not in result.output and ".py:" not in result.output
    assert note in result.stdout and json.loads((tmp_path / "out" / "analysis.json").read_text())["comparison"]


def test_analyze_a_study_whose_every_top1_is_infinite(tmp_path, monkeypatch):
    from .test_analysis import make_study

    monkeypatch.chdir(tmp_path)
    make_study(tmp_path / "a", n=12), make_study(tmp_path / "b", n=12, shift=float("inf"))
    _refused(
        ["analyze", "a", "b", "--out", "out"],
        ["(b) has no completed candidates", "12 without a finite top-1"],
        tmp_path,
    )


def test_force_lets_an_expert_go_past_the_memory_estimate(hostile, monkeypatch):
    import xnetspace.memory_limit as memory_limit

    monkeypatch.setattr(memory_limit, "available_memory", lambda: 1 << 20)  # pretend 1 MB is free
    _refused(["build", "ok.yaml", "--image-size", "32"], ["would need about", "1.0 MB"], hostile)
    result = runner.invoke(app, ["build", "ok.yaml", "--image-size", "32", "--force", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["output_shape"] == [1, 10], result.output
    spec = NetworkSpec.from_yaml(OK_SPEC)
    with pytest.raises(MemoryLimitError, match="would need about"):
        build_model(spec)
    assert build_model(spec, force=True).num_classes == 10
    with pytest.raises(MemoryLimitError):
        build_model(spec, num_classes=5)  # overrides are checked too


@pytest.mark.slow
def test_memory_estimate_is_exact_for_the_network_and_bounds_a_measured_forward():
    for spec in random_specs(6, seed=13):
        model = build_model(spec)
        state = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        assert estimate_memory(spec).model == state
    # Peak resident memory of a real forward, measured in a fresh process (VmHWM after a reset), for
    # an attention-heavy and an MS-FFN-heavy network, where the feature maps dominate.
    code = (
        "import ctypes, gc, torch; from xnetspace.model import build_model; "
        "from xnetspace.memory import estimate_memory\n"
        "def kb(k): return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(k)) * 1024\n"
        "attn = {'stages': [{'depth': 2, 'embed_dim': 32, 'num_heads': 4, 'attn_ratio': 1}]}\n"
        "ffn = {'stages': [{'depth': 2, 'embed_dim': 64, 'mlp_ratio': 8, 'attn_ratio': 0, 'idconv_groups': 1}]}\n"
        "for spec, size in ((attn, 128), (ffn, 224)):\n"
        "    m = build_model(spec).eval()\n"
        "    with torch.inference_mode(): m(torch.randn(1, 3, 16, 16))\n"
        "    gc.collect(); ctypes.CDLL('libc.so.6').malloc_trim(0)  # freed heap back to the system\n"
        "    open('/proc/self/clear_refs', 'w').write('5'); base = kb('VmRSS')\n"
        "    with torch.inference_mode(): m(torch.randn(1, 3, size, size))\n"
        "    print(kb('VmHWM') - base, estimate_memory(m.spec, size).activations)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    for line in out.stdout.split("\n")[:2]:
        measured, bound = map(int, line.split())
        assert measured <= bound <= 4 * measured, (measured, bound)


def test_check_memory_reports_estimate_and_available():
    spec = load_preset("transxnet_t")
    assert check_memory(spec, 224, available=1 << 40).total == estimate_memory(spec, 224).total
    with pytest.raises(MemoryLimitError, match=r"would need about .* but only 1\.0 KB"):
        check_memory(spec, 224, available=1024)


def test_internal_error_prints_one_paragraph_and_a_log_file(hostile, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(cli, "cost_report", broken)
    monkeypatch.setattr(sys, "argv", ["xnetspace", "flops", "ok.yaml"])
    with pytest.raises(SystemExit) as done:
        cli.main()
    err = capsys.readouterr().err
    assert done.value.code == 1 and "Traceback" not in err and len(err) < 600
    assert "internal error: RuntimeError: simulated bug" in err
    log = Path(err.split("the traceback is in ")[1].split(" (please")[0])
    text = log.read_text()
    assert "Traceback" in text and "simulated bug" in text and "'flops', 'ok.yaml'" in text
    log.unlink()


def test_keyboard_interrupt_in_process_exits_130(hostile, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cost_report", interrupted)
    monkeypatch.setattr(sys, "argv", ["xnetspace", "flops", "ok.yaml"])
    with pytest.raises(SystemExit) as done:
        cli.main()
    err = capsys.readouterr().err
    assert done.value.code == 130 and "interrupted" in err and "Traceback" not in err


@pytest.mark.slow
def test_ctrl_c_exits_130_without_a_traceback(hostile):
    # The child imports first and says so; SIGINT then lands inside the command (a long space check).
    code = (
        "import sys, xnetspace.cli as c; print('ready', flush=True); "
        "sys.argv = ['xnetspace', 'space', 'tiny_cpu', '--draws', '100000']; c.main()"
    )
    # Ctrl-C as a terminal sends it: a suite started in the background (`cmd &`) hands its children
    # SIGINT ignored, and Python then never installs its KeyboardInterrupt handler.
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert child.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    child.send_signal(signal.SIGINT)
    start = time.perf_counter()
    _, err = child.communicate(timeout=30)
    assert child.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err and len(err) < 1000
    assert time.perf_counter() - start < 5


# -- issue 28: messages, JSON and validation -----------------------------------------------------------
def _strict_json(text: str):
    """``json.loads`` as a strict parser reads JSON: NaN, Infinity and -Infinity are not JSON."""

    def refuse(word: str):
        raise ValueError(f"not JSON: {word}")

    return json.loads(text, parse_constant=refuse)


MEMORY_STORAGES = ["sqlite:///:memory:", "sqlite://", "sqlite:///file::memory:?cache=shared&uri=true"]


@pytest.mark.parametrize("url", MEMORY_STORAGES)
@pytest.mark.parametrize("command", ["search", "worker"])
def test_issue28_item18_an_in_memory_storage_is_refused(command, url, hostile):
    import xnetspace.search.join
    import xnetspace.search.runner  # noqa: F401 - imported before the clock starts (MAX_SECONDS excludes imports)

    args = SEARCH if command == "search" else ["worker", "--study-name", "x"]
    out = _refused(
        args + ["--storage", url], ["in-memory SQLite database", "worker processes could not share it"], hostile
    )
    assert "StorageInternalError" not in out and "internal error" not in out
    assert not (hostile / "run").exists()  # refused before the output folder was made


@pytest.mark.parametrize("value", ["1.0e+308", "-3.5e+38", "1.0e+39"])
def test_issue28_item19_floats_float32_cannot_hold_are_refused_at_validation(value, hostile):
    (hostile / "huge_scale.yaml").write_text(f"stages: [{STAGE}]\nlayer_scale_init_value: {value}\n")
    for command in ("flops", "build"):
        _refused([command, "huge_scale.yaml"], ["layer_scale_init_value = ", "beyond float32's range"], hostile)
    stage = {"depth": 1, "embed_dim": 16}
    checked = []
    for model, base in ((StageSpec, stage), (NetworkSpec, {"stages": [stage]})):  # every float field, by a bound
        for field in [name for name, info in model.model_fields.items() if isinstance(info.default, float)]:
            with pytest.raises(ValidationError, match=field):
                model.model_validate({**base, field: float(value)})
            checked.append(field)
    assert len(checked) == 5  # mlp_ratio, attn_ratio, drop_rate, drop_path_rate, layer_scale_init_value
    spec = NetworkSpec.model_validate({"stages": [{"depth": 1, "embed_dim": 16}], "layer_scale_init_value": 3.4e38})
    assert spec.layer_scale_init_value == 3.4e38  # float32's largest values stay valid


def test_issue28_item21_build_json_with_nan_weights_is_strict_json(hostile):
    result = runner.invoke(app, ["build", "tiny.yaml", "--image-size", "32", "--checkpoint", "nan.pt", "--json"])
    assert result.exit_code == 0, result.output
    data = _strict_json(result.stdout)
    assert data["top5"][0]["prob"] is None and data["nonfinite_weights"] == ["stem.conv.weight", "head.fc.bias"]


NAN_RESULT = {"precision_at_5": float("nan"), "tau": [float("inf"), -float("inf"), 0.5], "pair": (1.0, float("nan"))}


class _Prepared:
    def to_dict(self) -> dict:
        return dict(NAN_RESULT)


class _Dumped:
    """Stands in for a Pydantic result (analyze's AnalysisResult), whose --json is its model_dump."""

    def model_dump(self, **kwargs) -> dict:
        return dict(NAN_RESULT)


# (command line, module, function, what the stub returns): each command's --json over a NaN-laden result
JSON_COMMANDS = [
    (["analyze", "run", "--json"], "xnetspace.search.analysis_run", "run_analysis", (_Dumped(), {}, [])),
    (
        ["prepare", "imagefolder:one_image", "--image-size", "16", "--json"],
        "xnetspace.search.prepare",
        "prepare_dataset",
        _Prepared(),
    ),
]


@pytest.mark.parametrize("args,module,function,returned", JSON_COMMANDS, ids=[c[0][0] for c in JSON_COMMANDS])
def test_issue28_item21_every_json_output_is_strict_json(args, module, function, returned, hostile, monkeypatch):
    import importlib

    monkeypatch.setattr(importlib.import_module(module), function, lambda *a, **k: returned)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = _strict_json(result.stdout)
    assert data["precision_at_5"] is None and data["tau"] == [None, None, 0.5] and data["pair"] == [1.0, None]


def _nan_refine_result():
    """A refine.json (RefineResult) holding NAN_RESULT's non-finite values in its float fields."""
    from xnetspace.search.analysis_schema import Evidence, RefineResult, ScoreInfo

    nan, inf = float("nan"), float("inf")
    test = Evidence(
        members=3,
        satisfying=2,
        ks_statistic=nan,
        ks_pvalue=None,
        edf_gap=inf,
        edf_gap_normalized=None,
        mean_difference=-inf,
        mean_difference_ci95=[inf, -inf, 0.5],
        mean_difference_plain=0.5,
        mean_difference_plain_ci95=[1.0, nan],
        normalized=False,
        bins=None,
    )
    score = ScoreInfo(name="loss", label="validation cross-entropy", unit="nats", direction="minimize")
    return RefineResult(
        **dict.fromkeys(["study", "source", "space", "refined_space", "refined_space_file", "rule"], "run"),
        score=score,
        members=3,
        knobs_before=[],
        knobs_after=[],
        steps=[],
        accepted=[],
        members_left=2,
        final_test=test,
        importance={"precision_at_5": nan},
        warnings=[],
    )


def test_issue28_item21_refines_json_output_is_strict_json(hostile, monkeypatch):
    # as test_issue28_item21_every_json_output_is_strict_json, over refine_run's RefineResult
    import xnetspace.search.refine_verify as refine_verify

    monkeypatch.setattr(refine_verify, "refine_run", lambda *a, **k: (_nan_refine_result(), {}))
    result = runner.invoke(app, ["refine", "run", "--out", "out", "--json"])
    assert result.exit_code == 0, result.output
    data = _strict_json(result.stdout)
    test = data["final_test"]
    assert data["importance"]["precision_at_5"] is None and test["mean_difference_ci95"] == [None, None, 0.5]
    assert test["mean_difference_plain_ci95"] == [1.0, None]
    assert test["ks_statistic"] is None and test["edf_gap"] is None and test["mean_difference"] is None


def _nan_fidelity_result():
    """A fidelity.json (FidelityResult) holding NAN_RESULT's non-finite values in its float fields."""
    from xnetspace.search.fidelity_schema import FidelityNoise, FidelityResult, RacingRow, ScoreRow
    from xnetspace.search.summary import Ceiling, TauRho

    nan, inf = float("nan"), float("inf")
    row = ScoreRow(
        name="loss@1",
        label="proxy cross-entropy, mean of 1 seed",
        kendall_tau=inf,
        spearman_rho=-inf,
        ci95=TauRho(kendall_tau=[inf, -inf], spearman_rho=[0.5, nan]),
        n=3,
        precision_at_5=nan,
        precision_at_5_ci95=[1.0, nan],
        fraction_of_ceiling=nan,
    )
    racing = RacingRow(
        z=0.5,
        first_seeds=1,
        seeds=2,
        fraction_of_runs=1.0,
        kendall_tau=nan,
        best_kept_all_seeds=1.0,
        best_ranked_first=0.0,
    )
    return FidelityResult(
        target="confirmed cross-entropy",
        n_specs=3,
        seeds=2,
        ceiling=Ceiling(kendall_tau=nan, ci95=[nan, 0.5], n=3, seeds=2, splits=1),
        scores=[row],
        noise=FidelityNoise(proxy_seed_std=nan, proxy_architecture_std=inf, confirm_seed_std=0.5),
        racing=[racing],
        seconds_this_run=nan,
    )


def test_issue28_item21_fidelitys_json_output_is_strict_json(hostile, monkeypatch):
    # as test_issue28_item21_every_json_output_is_strict_json, over run_fidelity's FidelityResult
    import xnetspace.search.fidelity as fidelity

    monkeypatch.setattr(fidelity, "run_fidelity", lambda *a, **k: _nan_fidelity_result())
    result = runner.invoke(app, ["fidelity", "tiny_cpu", "--out", "out", "--json"])
    assert result.exit_code == 0, result.output
    data = _strict_json(result.stdout)
    score = data["scores"][0]
    assert score["precision_at_5"] is None and score["ci95"]["kendall_tau"] == [None, None]
    assert score["ci95"]["spearman_rho"] == [0.5, None] and score["precision_at_5_ci95"] == [1.0, None]
    assert score["kendall_tau"] is None and score["spearman_rho"] is None and score["fraction_of_ceiling"] is None
    assert data["ceiling"]["kendall_tau"] is None and data["ceiling"]["ci95"] == [None, 0.5]
    assert data["noise"] == {"proxy_seed_std": None, "proxy_architecture_std": None, "confirm_seed_std": 0.5}
    assert data["racing"][0]["kendall_tau"] is None and data["seconds_this_run"] is None
    assert "seconds_trained" not in data and "config" not in data  # fields never set are not written


def test_issue28_item21_the_cost_commands_json_is_strict_and_one_helper_writes_it(hostile):
    for args in (
        ["flops", "tiny.yaml", "--json"],
        ["scale", "tiny.yaml", "--flops", "3M", "--image-size", "32", "--json"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and _strict_json(result.stdout)["flops"] > 0, result.output
    assert "json.dumps" not in Path(cli.__file__).read_text()  # every --json goes through strict_json.to_json

    from xnetspace.strict_json import to_json

    assert _strict_json(to_json({"a": [float("nan"), {"b": float("-inf")}], "c": 1.5})) == {
        "a": [None, {"b": None}],
        "c": 1.5,
    }


def _rules_space(**width) -> dict:
    """A four-stage space whose widths and depths come from RegNet's rule (tests/test_space_forms.py's)."""
    return {
        "name": "rules",
        "network": {"image_size": 32},
        "rules": {
            "width": {
                "w0": {"low": 16, "high": 32, "step": 16},
                "wa": {"low": 8, "high": 48},
                "wm": {"low": 1.5, "high": 3.0},
                "depth": {"low": 4, "high": 8},
                "quantum": 16,
                **width,
            }
        },
        "stages": [{"num_heads": 1, "sr_ratio": 4}, {"num_heads": 2}, {"num_heads": 4}, {"num_heads": 4}],
        "constraints": {"image_size": 32, "flops": ["0.5M", "30M"]},
    }


NONFINITE_SPACES = [
    ({"wa": {"low": float("nan"), "high": 48}}, ["rules.width.wa", "wa.low = nan", "finite number"]),
    ({"wm": {"low": 1.5, "high": float("inf")}}, ["rules.width.wm", "wm.high = inf", "finite number"]),
    ({"wa": float("nan")}, ["rules.width.wa = nan", "finite numbers, not nan"]),
    ({"wm": [2.0, float("inf")]}, ["rules.width.wm", "finite numbers, not inf"]),
    ({"train": {"lr": float("inf")}}, ["train.lr = inf", "finite number"]),
    ({"constraints": {"image_size": 32, "max_latency_ms": float("inf")}}, ["constraints.max_latency_ms = inf"]),
]


@pytest.mark.parametrize("change,texts", NONFINITE_SPACES, ids=[str(c[0]) for c in NONFINITE_SPACES])
def test_issue28_item22_nan_and_inf_in_a_space_are_refused_at_load(change, texts, hostile):
    data = _rules_space()
    if "train" in change or "constraints" in change:
        data.update(change)
    else:
        data["rules"]["width"].update(change)
    (hostile / "nonfinite.yaml").write_text(yaml.safe_dump(data))
    out = _refused(["space", "nonfinite.yaml"], ["invalid space file nonfinite.yaml", *texts], hostile)
    assert "cannot convert" not in out and "draws" not in out  # refused at load, before any draw


def test_issue28_item23_rejection_reasons_keep_their_numbers_whole(hostile):
    (hostile / "rules.yaml").write_text(yaml.safe_dump(_rules_space()))
    result = runner.invoke(app, ["space", "rules.yaml", "--draws", "40"])
    assert result.exit_code == 0, result.output
    reasons = " ".join(result.stdout.split()).split("commonest rejections: ")[1]
    assert "#" not in reasons, reasons
    width = reasons.split(";")[0]  # the commonest: the rule gives another number of stages
    assert re.fullmatch(
        r"rules\.width gives \d+ stages, the space has 4 \(w0 \d+, wa [\d.]+, wm [\d.]+, depth \d+: "
        r"widths \[\d+(, \d+)*\]\) and the like \(\d+x\)",
        width,
    ), width


def test_issue28_item23_a_space_with_more_stages_than_a_network_is_refused_at_load(hostile):
    data = {"name": "x", "stages": [{"embed_dim": 16, "depth": 1}] * 17}
    (hostile / "stages17_space.yaml").write_text(yaml.safe_dump(data))
    out = _refused(
        ["space", "stages17_space.yaml"], ["invalid space file", "17 stages; a network has at most 16"], hostile
    )
    assert "#" not in out and "draws" not in out


def test_issue28_item24_a_raw_pickle_names_its_callable_and_no_torch_warning_leaks(hostile):
    import pickle
    import warnings

    for protocol in (2, 4, 5):
        (hostile / f"raw{protocol}.pt").write_bytes(pickle.dumps({"state_dict": Pickled()}, protocol=protocol))
    torch.save(
        {"state_dict": Pickled()}, hostile / "legacy4.pt", _use_new_zipfile_serialization=False, pickle_protocol=4
    )
    for name in ("raw2.pt", "raw4.pt", "raw5.pt", "legacy4.pt"):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")  # what reaches stderr outside pytest
            out = _refused(
                ["build", "tiny.yaml", "--checkpoint", name],
                [name, "weights-only", "posix.system", "refused unread"],
                hostile,
            )
        assert not [w for w in seen if issubclass(w.category, UserWarning)], [str(w.message) for w in seen]
        assert "Unsupported operand" not in out and "UserWarning" not in out


BROKEN_YAML = [
    (
        "name: x\nstages: [{depth: 1, embed_dim: 16}\n",
        ["line 3, column 1", "while parsing a flow sequence at line 2, column 9"],
    ),
    ("name: x\n  stages: 3\n", ["mapping values are not allowed here at line 2, column 9"]),
    ('name: "x\nstages: [1]\n', ["found unexpected end of stream", "quoted scalar at line 1, column 7"]),
    ("name: x\n\tstages: 1\n", ["found character '\\t' that cannot start any token at line 2, column 1"]),
]


@pytest.mark.parametrize("text,texts", BROKEN_YAML, ids=[f"case{i}" for i in range(len(BROKEN_YAML))])
@pytest.mark.parametrize("command", ["flops", "space"])
def test_issue28_item27_a_yaml_syntax_error_is_one_paragraph(command, text, texts, hostile):
    (hostile / "broken.yaml").write_text(text)
    out = _refused([command, "broken.yaml"], ["broken.yaml: not valid YAML: ", *texts], hostile)
    err = out.strip()
    assert "\n" not in err and "^" not in err and "<unicode string>" not in err, err


# -- random mappings (hypothesis): only the documented errors, and short messages ---------------------
_FIELDS = list(NetworkSpec.model_fields) + ["warp_drive"]
_STAGE_FIELDS = list(StageSpec.model_fields) + ["depht"]
_anything = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=200)
    | st.integers(min_value=10**30, max_value=10**60),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner, max_size=5),
    max_leaves=20,
)
_stage = st.dictionaries(st.sampled_from(_STAGE_FIELDS), _anything | st.integers(0, 64), max_size=9)
_valid_stage = st.fixed_dictionaries(
    {
        "depth": st.integers(1, 3),
        "embed_dim": st.sampled_from([4, 8, 16, 24, 32, 48]),
        "num_heads": st.sampled_from([1, 2, 3, 4]),
        "sr_ratio": st.integers(1, 8),
        "idconv_groups": st.integers(1, 4),
        "idconv_kernel_size": st.sampled_from([1, 3, 5, 7]),
        "mlp_ratio": st.sampled_from([0.5, 1, 2, 4]),
        "attn_ratio": st.sampled_from([0, 0.25, 0.5, 1, 0.3]),
    }
)
_network = st.fixed_dictionaries(
    {},
    optional={
        **{k: _anything | st.integers(0, 300) | st.floats(0, 1) for k in _FIELDS},
        "stages": st.lists(_stage | _valid_stage, min_size=0, max_size=4) | _anything,
    },
)
FAST = settings(max_examples=60, deadline=1000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@FAST
@given(_network)
def test_random_spec_mappings_raise_only_validation_errors(data):
    try:
        spec = NetworkSpec.model_validate(data)
    except ValidationError as err:
        message = format_validation_error(err, "spec")
        assert len(message) < MAX_OUTPUT and message.startswith("invalid spec")
        return
    estimate = estimate_memory(spec, 64)
    assert estimate.model > 0 and estimate.activations > 0  # valid specs cost something, at once


@FAST
@given(st.text(max_size=300) | _anything.map(lambda v: yaml.safe_dump(v)))
def test_random_yaml_text_raises_only_spec_errors(text):
    try:
        NetworkSpec.from_yaml(text)
    except ValidationError as err:
        assert len(format_validation_error(err)) < MAX_OUTPUT
    except SpecError as err:
        assert len(str(err)) < 1000


# -- issue 28: one path rule for every file and folder a command writes (xnetspace/paths.py) ---------
@contextlib.contextmanager
def _no_hang(seconds: int = 10):
    """A command that blocks (opening a FIFO waits for a reader forever) fails the test instead."""

    def hung(signum, frame):
        raise TimeoutError(f"the command hung for {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def paths(hostile):
    """The hostile folder plus a tiny image folder (2 classes x 3 images of 8x8) and links."""
    for cls in ("cat", "dog"):
        (hostile / "photos" / cls).mkdir(parents=True)
        for i in range(3):
            (hostile / "photos" / cls / f"{i}.png").write_bytes(_png_8x8_colour(i))
    (hostile / "link_spec").symlink_to("ok.yaml")
    (hostile / "link_fifo").symlink_to("fifo")
    (hostile / "dangling.npz").symlink_to("made/by_prepare.npz")
    (hostile / "small.yaml").write_text(SMALL_SPACE.format(name="small"))
    return hostile


def _png_8x8_colour(i: int) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (40 * i, 30, 200)).save(out, format="PNG")
    return out.getvalue()


def _kinds(folder: Path) -> dict[str, str]:
    """What each name in ``folder`` is (file, link, FIFO, ...) and where each link points."""
    return {p.name: _kind(str(p)) + (f" -> {os.readlink(p)}" if p.is_symlink() else "") for p in folder.iterdir()}


PREPARE = ["prepare", "imagefolder:photos", "--image-size", "16", "--out"]
# A one-spec space on 32 synthetic images: a search refused at its storage or output folder stays fast.
SMALL_SPACE = (
    "name: {name}\nstages: [{{embed_dim: 16, depth: 1}}]\nconstraints: {{image_size: 16, flops: [1, 1G]}}\n"
    "train: {{image_size: 16, epochs: 1, batch_size: 16}}\n"
)
SMALL_SEARCH = ["search", "--space", "small.yaml", "--dataset", "synthetic:32", "--n-trials", "1"]


def load_prepared_labels(path: Path) -> int:
    from xnetspace.search.prepare import load_prepared

    return len(load_prepared(path).labels)


def test_issue28_item01_prepare_never_replaces_an_existing_out(paths):
    _refused([*PREPARE, "ok.yaml"], ["cannot write the prepared file to 'ok.yaml'", "exists", "never replaces"], paths)
    result = runner.invoke(app, [*PREPARE, "new.npz"])
    assert result.exit_code == 0 and load_prepared_labels(paths / "new.npz") == 6, result.output
    _refused([*PREPARE, "new.npz"], ["'new.npz'", "the file exists"], paths)  # not even its own earlier file


@pytest.mark.parametrize(
    "target,texts",
    [
        ("fifo", ["'fifo'", "FIFO"]),
        ("readonly.pt", ["'readonly.pt'", "exists"]),
        ("link_spec", ["'link_spec'", "exists", "the symlink's target"]),
        ("link_fifo", ["'link_fifo'", "FIFO", "the symlink's target"]),
        ("loop_a", ["'loop_a'", "symlink loop"]),
        ("sock", ["'sock'", "socket"]),
    ],
)
def test_issue28_item02_prepare_out_is_never_a_special_file_a_read_only_file_or_a_link_replaced(paths, target, texts):
    before = _kinds(paths)
    with _no_hang():
        _refused([*PREPARE, target], ["cannot write the prepared file", *texts], paths)
    assert _kinds(paths) == before


def test_issue28_item02_prepare_out_follows_a_dangling_link_to_its_target(paths):
    result = runner.invoke(app, [*PREPARE, "dangling.npz"])
    assert result.exit_code == 0, result.output
    assert _kind("dangling.npz") == "link" and os.readlink("dangling.npz") == "made/by_prepare.npz"
    assert load_prepared_labels(paths / "made" / "by_prepare.npz") == 6
    assert not [p for p in paths.rglob("*") if ".partial" in p.name]


@pytest.mark.parametrize("target", ["photos/cat/0.png", "photos/new.npz", "photos/dog"])
def test_issue28_item03_prepare_out_is_never_inside_the_image_folder(paths, target):
    texts = ["is a folder"] if target == "photos/dog" else ["inside the input folder 'photos'"]
    _refused([*PREPARE, target], texts, paths)
    assert sorted(p.name for p in (paths / "photos").rglob("*")) == sorted(
        ["cat", "dog"] + [f"{i}.png" for i in range(3)] * 2
    )


SCALE = ["scale", "transxnet_t", "--flops", "3M", "--image-size", "32", "--save"]


@pytest.mark.parametrize("target", ["fifo", "link_fifo"])
def test_issue28_item04_scale_save_onto_a_fifo_is_refused_at_once(paths, target):
    before = _kinds(paths)
    with _no_hang():
        _refused([*SCALE, target], ["cannot save the spec", f"'{target}'", "FIFO"], paths)
    assert _kinds(paths) == before


def test_issue28_item05_scale_save_onto_a_read_only_file_is_refused(paths):
    _refused([*SCALE, "readonly.pt"], ["cannot save the spec to 'readonly.pt'", "read-only"], paths)
    assert (paths / "readonly.pt").read_bytes() == b"keep me"
    result = runner.invoke(app, [*SCALE, "scaled.yaml"])  # the rule still lets a new file through
    assert result.exit_code == 0 and NetworkSpec.from_yaml((paths / "scaled.yaml").read_text()).stages


@pytest.mark.parametrize(
    "args,texts",
    [
        (["build", "ok.yaml", "--image-size", "32", "--save", "ok.yaml"], ["an input of this command ('ok.yaml')"]),
        (["build", "ok.yaml", "--image-size", "32", "--save", "link_spec"], ["an input of this command"]),
        (
            ["build", "tiny.yaml", "--image-size", "32", "--checkpoint", "tiny.pt", "--save", "tiny.pt"],
            ["an input of this command ('tiny.pt')"],
        ),
        (["scale", "ok.yaml", "--flops", "3M", "--image-size", "32", "--save", "ok.yaml"], ["an input"]),
        (["build", "ok.yaml", "--image-size", "32", "--save", "new/"], ["'new/'", "ending in '/'", "file name"]),
        ([*SCALE, "new/"], ["'new/'", "ending in '/'"]),
    ],
    ids=[
        "build-own-spec",
        "build-spec-via-link",
        "build-own-checkpoint",
        "scale-own-spec",
        "build-slash",
        "scale-slash",
    ],
)
def test_issue28_item06_save_never_replaces_an_input_and_refuses_a_trailing_slash(paths, args, texts):
    _refused(args, ["cannot save", *texts], paths)
    assert not (paths / "new").exists()


@pytest.mark.parametrize(
    "args",
    [
        [*SMALL_SEARCH, "--workers-per-device", "1", "--out", ""],
        ["fidelity", "small.yaml", "--dataset", "synthetic:32", "--n-specs", "3", "--seeds", "2", "--out", ""],
        ["analyze", "a", "--out", ""],
        ["refine", "a", "--out", ""],
        ["build", "ok.yaml", "--save", ""],
        [*PREPARE, ""],
    ],
    ids=["search", "fidelity", "analyze", "refine", "build", "prepare"],
)
def test_issue28_item07_an_empty_out_is_refused_by_every_command(paths, args):
    from .test_analysis import make_study

    if args[0] in ("analyze", "refine"):
        make_study(paths / "a", n=12)  # a real study: without the rule analyze wrote its files into "."
    before = sorted(p.name for p in paths.iterdir())
    with _no_hang(60):  # without the rule the search would train in "."
        _refused(args, ["needs a name, got an empty one"], paths)
    assert sorted(p.name for p in paths.iterdir()) == before


@pytest.mark.parametrize(
    "space_name,extra,folder",
    [
        ("'../../escaped_space'", [], "_.._escaped_space-synthetic-loss"),
        ("small", ["--study-name", "../../x"], "_.._x"),
    ],
    ids=["space-name", "study-name"],
)
def test_issue28_item08_names_that_become_folders_stay_inside_runs(paths, monkeypatch, space_name, extra, folder):
    import xnetspace.search.runner as runner_module
    from xnetspace.paths import path_name
    from xnetspace.search.errors import SearchError

    (paths / "small.yaml").write_text(SMALL_SPACE.format(name=space_name))

    def stop(*args, **kwargs):
        raise SearchError("stopped by the test once the output folder is made")

    monkeypatch.setattr(runner_module, "open_study", stop)
    outside = [paths.parent.parent / "escaped_space-synthetic-loss", paths.parent.parent / "x", paths.parent / "runs"]
    result = runner.invoke(app, [*SMALL_SEARCH, *extra])
    assert result.exit_code == 2 and "stopped by the test" in result.stderr, result.output
    assert sorted(p.name for p in (paths / "runs").iterdir()) == [folder]
    assert not any(p.exists() for p in outside)
    names = ("../../x", "..", ".", "", "a/b", "ok-name_1.5", "é x")
    assert [path_name(n) for n in names] == ["_.._x", "_", "_", "_", "a_b", "ok-name_1.5", "é_x"]


@pytest.mark.parametrize(
    "link,target,texts",
    [
        ("photos/cat/again", ".", ["a symlink loop", "cat/again leads back to cat"]),
        ("photos/cat/root", "../../photos", ["a symlink loop", "cat/root leads back to the folder itself"]),
        ("photos/dog/twin.png", "../cat/0.png", ["the same image", "cat/0.png", "dog/twin.png"]),
    ],
    ids=["loop-to-its-folder", "loop-to-the-image-folder", "one-image-in-two-classes"],
)
def test_issue28_item09_a_symlink_loop_or_a_twice_listed_image_is_refused(paths, link, target, texts):
    (paths / link).symlink_to(target)
    _refused([*PREPARE, "p.npz"], ["imagefolder:photos", *texts], paths)
    from xnetspace.search.data import DataError, load_dataset

    with pytest.raises(DataError, match="remove the link"):  # a study's first use refuses it too
        load_dataset("imagefolder:photos", 16)


def test_issue28_item09_each_real_image_is_listed_once_in_one_split(paths):
    from xnetspace.search.prepare import list_image_folder

    (paths / "more_cats").mkdir()
    for i in range(3):
        (paths / "more_cats" / f"m{i}.png").write_bytes(_png_8x8_colour(i + 3))
    (paths / "photos" / "cat" / "more").symlink_to("../../more_cats")  # a link elsewhere: followed, once
    listing = list_image_folder(paths / "photos")
    real = [os.path.realpath(paths / "photos" / p) for p in listing.paths]
    assert len(real) == len(set(real)) == 9 and "cat/more/m0.png" in listing.paths


@pytest.mark.parametrize("cache", ["ok.yaml", "ro_cache", "ok.yaml/below"])
def test_issue28_item10_a_cache_folder_that_cannot_be_written_is_an_error(paths, monkeypatch, cache):
    (paths / "ro_cache").mkdir()
    (paths / "ro_cache").chmod(0o555)  # read-only, also for root (who could write it anyway)
    monkeypatch.setenv("XNETSPACE_CACHE", cache)
    out = _refused(["prepare", "imagefolder:photos", "--image-size", "16"], [f"'{cache}'", "XNETSPACE_CACHE"], paths)
    assert "not written" not in out and list((paths / "ro_cache").iterdir()) == []


def test_issue28_item27_refused_sqlite_paths_leave_no_lock_file(paths):
    before = _kinds(paths)
    search = [*SMALL_SEARCH, "--out", "run", "--storage"]
    _refused([*search, "sqlite:///ok.yaml"], ["ok.yaml", "not a database"], paths)
    _refused([*search, "sqlite:///folder"], ["sqlite:///folder", "folder"], paths)
    with _no_hang():
        _refused([*search, "sqlite:///fifo"], ["sqlite:///fifo", "FIFO"], paths)
    assert _kinds(paths) == {**before, "run": "dir"} and not list((paths / "run").iterdir())  # --out, left empty
    assert not list(paths.rglob("*.lock"))


def test_issue28_item27_an_empty_spec_is_named_empty_not_dot(paths):
    for command in (["flops", ""], ["build", " "], ["space", ""]):
        out = _refused(command, ["is empty"], paths)
        assert "'.'" not in out


def test_issue28_rule_files_inside_an_output_folder_are_never_special(paths):
    (paths / "run").mkdir()
    os.mkfifo(paths / "run" / "summary.json")
    (paths / "out").mkdir()
    os.mkfifo(paths / "out" / "refine.json")
    with _no_hang():
        _refused([*SMALL_SEARCH, "--out", "run"], ["'run'", "its summary.json is a FIFO"], paths)
        _refused(["refine", "folder", "--out", "out"], ["'out'", "its refine.json is a FIFO"], paths)
    assert stat.S_ISFIFO(os.lstat(paths / "run" / "summary.json").st_mode)


# -- issue 28: one rule for numbers and options, refused with exit 2 before any work ---------------------
FIDELITY = ["fidelity", "tiny_cpu", "--n-specs", "3", "--out", "fid"]
WORKER = ["worker", "--storage", "sqlite:///study.db", "--study-name", "s"]
ISSUE28_CASES = [
    pytest.param(SEARCH + ["--devices", ""], ["--devices ''", "names no device"], id="item11 search --devices ''"),
    pytest.param(SEARCH + ["--devices", ",,,"], ["--devices ',,,'", "names no device"], id="item11 search ,,,"),
    pytest.param(FIDELITY + ["--devices", ""], ["--devices ''", "names no device"], id="item11 fidelity ''"),
    pytest.param(FIDELITY + ["--devices", " , "], ["names no device"], id="item11 fidelity ' , '"),
    pytest.param(WORKER + ["--devices", ""], ["--devices ''", "names no device"], id="item11 worker ''"),
    pytest.param(WORKER + ["--devices", ",,,"], ["names no device"], id="item11 worker ,,,"),
    pytest.param(
        SEARCH + ["--batch-size", "100000000000"],
        ["batch_size 100,000,000,000", "--batch-size", "898 training images"],
        id="item12 search --batch-size 1e11",
    ),
    pytest.param(
        SEARCH + ["--batch-size", "899"], ["batch_size 899", "at most 898"], id="item12 search --batch-size 899"
    ),
    pytest.param(SEARCH + ["--lr", "inf"], ["lr = inf", "finite"], id="item13 search --lr inf"),
    pytest.param(SEARCH + ["--lr", "nan"], ["lr = nan", "finite"], id="item13 search --lr nan"),
    pytest.param(SEARCH + ["--lr", "1e30"], ["lr = 1e+30", "less than or equal to 10"], id="item13 search --lr 1e30"),
    pytest.param(SEARCH + ["--trial-time-limit", "inf"], ["time_limit = inf", "finite"], id="item13 time limit inf"),
    pytest.param(SEARCH + ["--timeout", "nan"], ["timeout = nan", "finite"], id="item13 search --timeout nan"),
    pytest.param(["analyze", "folder", "--bins", "0"], ["--bins 0", "between 1 and 100"], id="item15 --bins 0"),
    pytest.param(["analyze", "folder", "--bins", "-1"], ["--bins -1", "between 1 and 100"], id="item15 --bins -1"),
    pytest.param(
        ["analyze", "folder", "--bins", "1000000000"], ["--bins 1,000,000,000", "between 1"], id="item15 --bins 1e9"
    ),
    pytest.param(
        SEARCH + ["--workers-per-device", "1000"],
        ["--workers-per-device 1,000", "at most"],
        id="item16 search --workers-per-device 1000",
    ),
    pytest.param(
        FIDELITY + ["--workers-per-device", "1000"], ["--workers-per-device 1,000", "at most"], id="item16 fidelity"
    ),
    pytest.param(WORKER + ["--workers-per-device", "1000"], ["--workers-per-device 1,000"], id="item16 worker"),
    pytest.param(
        WORKER + ["--workers-per-device", "0"],
        ["--workers-per-device 0", "at least 1"],
        id="item16 worker --workers-per-device 0",
    ),
    pytest.param(
        SEARCH + ["--image-size", "100000"], ["image_size = 100000", "16384"], id="item17 search --image-size 100000"
    ),
    pytest.param(
        SEARCH + ["--image-size", "16384"],
        ["image_size 16,384 (--image-size)", "would need about", "TB", "available"],
        id="item17 search --image-size 16384 (memory)",
    ),
]


@pytest.mark.parametrize("args,texts", ISSUE28_CASES)
def test_issue28_numbers_and_options_are_refused_before_any_work(args, texts, hostile, monkeypatch):
    import xnetspace.search.workers as workers

    monkeypatch.setattr(workers, "spawn_workers", lambda *a, **k: pytest.fail("worker processes started"))
    _refused(args, texts, hostile)
    assert not (hostile / "study.db").exists() and not (hostile / "fid").exists()


def test_issue28_item26_every_seed_follows_one_rule(hostile):
    """search, fidelity and refine refuse --seed -1 (and 2**31) with the same words, before any work;
    the library's configs hold the same bounds."""
    from xnetspace.search import RunOptions
    from xnetspace.search.fidelity import FidelityConfig
    from xnetspace.search.refine_verify import refine_run
    from xnetspace.search.space import load_space
    from xnetspace.search.train import TrainConfig
    from xnetspace.spec import MAX_SEED

    messages = set()
    for command in (SEARCH, FIDELITY, ["refine", "folder", "--out", "refined"]):
        for seed in ("-1", str(MAX_SEED + 1)):
            out = _refused(command + ["--seed", seed], ["--seed"], hostile)
            messages.add((seed, out.split("--seed")[-1]))
    assert len(messages) == 2, messages  # one message per value, whatever the command
    assert not (hostile / "refined").exists()
    for model, fields in (
        (TrainConfig, {"seed": -1}),
        (RunOptions, {"seed": -1}),
        (FidelityConfig, {"space": load_space("tiny_cpu"), "seed": MAX_SEED + 1}),
    ):
        with pytest.raises(ValidationError, match="seed"):
            model(**fields)
    with pytest.raises(ValueError, match=r"--seed -1 must be between 0 and 2,147,483,647"):
        refine_run(hostile / "folder", hostile / "refined", seed=-1)
    assert not (hostile / "refined").exists()


def test_issue28_item25_refine_checks_the_verify_options_before_writing(tmp_path, monkeypatch):
    from .test_refine import make_population

    monkeypatch.chdir(tmp_path)
    population = make_population(tmp_path / "pop", n=40)
    before = _files(tmp_path)
    result = runner.invoke(
        app, ["refine", str(population), "--out", "out", "--workers-per-device", "0", "--verify", "2"]
    )
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err == "error: --workers-per-device 0 must be at least 1", err
    assert not (tmp_path / "out").exists() and _files(tmp_path) == before
    result = runner.invoke(app, ["refine", str(population), "--out", "out", "--devices", ",", "--verify", "2"])
    assert result.exit_code == 2 and "names no device" in result.stderr and not (tmp_path / "out").exists()


# -- issue 28: a study whose trials keep failing says why and stops ----------------------------------
FAILING_SPACE = (
    "name: small\nstage_defaults: {depth: 1, mlp_ratio: [1, 2], idconv_kernel_size: [3, 5]}\n"
    "stages:\n  - {embed_dim: {low: 8, high: 24, step: 8}, sr_ratio: [2, 4], attn_ratio: [0.5, 1.0]}\n"
    "  - {embed_dim: {low: 16, high: 48, step: 16}, num_heads: [1, 2]}\n"
    "constraints: {image_size: 16}\ntrain: {image_size: 16, epochs: 1, batch_size: 16}\n"
)
FAILING_SEARCH = [
    "search", "--space", "small.yaml", "--dataset", "synthetic:64", "--sampler", "random", "--pruner", "none",
    "--confirm-top", "0", "--baseline", "none", "--workers-per-device", "1", "--out", "run",
    "--timeout", "60",  # without the fix such a study never ends: the test then fails instead of hanging
]  # fmt: skip


def _nan_trainer(spec, data, config, device, report):
    """Training whose validation cross-entropy is NaN (what --lr 1e30 gave): no score to rank by."""
    from xnetspace.search.train import TrainResult

    result = TrainResult(history=[10.0], loss_history=[float("nan")], train_loss_history=[2.0])
    report(0, result)
    return result


def _failing_study(folder: Path, monkeypatch, n_trials: int):
    from .conftest import use_trainer

    monkeypatch.chdir(folder)
    (folder / "small.yaml").write_text(FAILING_SPACE)
    use_trainer(monkeypatch, _nan_trainer)
    return runner.invoke(app, [*FAILING_SEARCH, "--n-trials", str(n_trials)])


def test_issue28_item13_failing_trials_are_reported_and_the_study_stops(tmp_path, monkeypatch):
    import optuna

    import xnetspace.search.study as study_module
    from xnetspace.search.records import read_trial

    assert study_module.MAX_FAILURES_IN_A_ROW == 10  # docs/search.md says so
    monkeypatch.setattr(study_module, "MAX_FAILURES_IN_A_ROW", 3)  # the rule, at a third of the trials
    result = _failing_study(tmp_path, monkeypatch, n_trials=50)
    assert result.exit_code == 1, result.output
    err = result.stderr.strip().splitlines()[-1]  # after the progress bars
    assert err.startswith("error: study 'small-synthetic-loss' stopped: its last 3 trials failed one after"), err
    assert "validation cross-entropy is nan" in err and "re-run the same command" in err
    study = optuna.load_study(study_name="small-synthetic-loss", storage=f"sqlite:///{tmp_path}/run/study.db")
    failed = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 3  # it stopped there, 47 trials short of N
    assert all("validation cross-entropy is nan" in read_trial(t).reason for t in failed)
    lines = [line for line in result.stdout.splitlines() if " FAIL " in line]
    assert len(lines) == 3 and all("[validation cross-entropy is nan" in line for line in lines), result.stdout
    assert "validation cross-entropy is nan" in (tmp_path / "run" / "trials.csv").read_text()


def test_issue28_item14_analyze_counts_failed_trials(tmp_path, monkeypatch):
    result = _failing_study(tmp_path, monkeypatch, n_trials=2)
    assert result.exit_code == 1 and "every one of its 2 trial(s) failed" in result.stderr, result.output
    assert "failed one after another" not in result.stderr  # 2 of 10: the study ended on its N
    result = runner.invoke(app, ["analyze", "run", "--out", "analysis"])
    assert result.exit_code == 2, result.output
    assert "has no completed candidates yet" in result.stderr and "(0 rejected, 0 pruned, 2 failed trials)" in (
        result.stderr
    )


# -- issue 28, item 27: the trial time limit, a finished study's worker, SIGTERM ---------------------
@pytest.mark.slow
def test_issue28_item27_the_time_limit_counts_the_whole_trial(tmp_path, monkeypatch):
    """Zero-cost scoring counts against --trial-time-limit (training never starts when it used the
    time up), and so does the evaluation after the last epoch."""
    import optuna

    import xnetspace.search.objective as objective
    import xnetspace.search.train as train
    from xnetspace.search import RunOptions, StudyConfig, run_search
    from xnetspace.search.data import load_dataset
    from xnetspace.search.records import read_trial
    from xnetspace.search.space import SearchSpace
    from xnetspace.search.train import TimeLimitExceeded, TrainConfig, train_seeds

    def slow_scores(*args, **kwargs):
        time.sleep(0.6)
        return {}

    monkeypatch.setattr(objective, "zero_cost_scores", slow_scores)
    monkeypatch.setattr(objective, "train_seeds", lambda *a, **k: pytest.fail("trained past the time limit"))
    space = SearchSpace.model_validate(yaml.safe_load(FAILING_SPACE))
    config = StudyConfig(space=space, dataset="synthetic:64", train=space.train.model_copy(update={"time_limit": 0.5}))
    options = RunOptions(
        n_trials=1, out=tmp_path, study_name="s", sampler="random", pruner="none", confirm_top=0,
        confirm_seeds=1, workers_per_device=1, progress=False,
    )  # fmt: skip
    trial = run_search(config, options).study.get_trials(states=(optuna.trial.TrialState.PRUNED,))[0]
    reason = read_trial(trial).reason
    assert reason.startswith("TimeLimitExceeded: past the 0.5 s time limit of a trial after "), reason
    assert float(reason.split(" after ")[1].removesuffix(" s")) >= 0.6  # the zero-cost scores' time counted

    # Training's clock, made to run only while the last epoch is evaluated: 10 s of it, past the limit.
    data, clock, real_evaluate = load_dataset("synthetic:64", 8), [0.0], train.evaluate

    def slow_evaluate(*args, **kwargs):
        clock[0] += 10.0
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(train, "evaluate", slow_evaluate)
    spec = NetworkSpec.model_validate({"stages": [{"depth": 1, "embed_dim": 8}]})
    recipe = TrainConfig(image_size=8, epochs=1, batch_size=16, time_limit=5.0)
    with pytest.raises(TimeLimitExceeded, match="past the 5 s time limit after epoch 1"):
        train_seeds(spec, data, [0], recipe)


def test_issue28_item27_a_worker_on_a_finished_study_exits_at_once(tmp_path, monkeypatch):
    import xnetspace.search.join as join
    from xnetspace.search import RunOptions, StudyConfig, run_search
    from xnetspace.search.space import SearchSpace

    from .conftest import use_trainer
    from .test_search import FakeTrainer

    use_trainer(monkeypatch, FakeTrainer())
    space = SearchSpace.model_validate(yaml.safe_load(FAILING_SPACE))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    options = RunOptions(
        n_trials=2, out=tmp_path / "run", storage=storage, study_name="s", sampler="random", confirm_top=0,
        confirm_seeds=2, workers_per_device=1, progress=False,
    )  # fmt: skip
    run_search(StudyConfig(space=space, dataset="synthetic:64", train=space.train), options)  # and its noise check
    monkeypatch.setattr(join, "local_data", lambda *a, **k: pytest.fail("loaded the data of a finished study"))
    monkeypatch.setattr(join, "run_processes", lambda *a, **k: pytest.fail("started worker processes"))
    monkeypatch.setattr(join, "run_worker", lambda *a, **k: pytest.fail("ran a worker"))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["worker", "--storage", storage, "--study-name", "s", "--workers-per-device", "2"])
    assert result.exit_code == 0, result.output
    assert "study 's' in sqlite:///" in result.output and "is finished: nothing left to do" in result.output


def test_issue28_item27_sigterm_ends_a_search_as_ctrl_c_does(tmp_path, monkeypatch, capsys):
    """SIGTERM (kill PID) during a search: exit 130 with the interrupted line, the study kept."""
    import optuna

    from .conftest import use_trainer
    from .test_search import FakeTrainer

    class Killed(FakeTrainer):  # the third candidate's training is where SIGTERM arrives
        def __call__(self, *args, **kwargs):
            if len(self.specs) == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().__call__(*args, **kwargs)

    def unhandled(signum, frame):  # without the fix the test fails here, instead of the runner dying
        raise RuntimeError("SIGTERM reached the caller's handler")

    previous = signal.signal(signal.SIGTERM, unhandled)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "small.yaml").write_text(FAILING_SPACE)
    use_trainer(monkeypatch, Killed())
    monkeypatch.setattr(sys, "argv", ["xnetspace", *FAILING_SEARCH, "--n-trials", "10"])
    try:
        with pytest.raises(SystemExit) as done:
            cli.main()
    finally:
        assert signal.signal(signal.SIGTERM, previous) is unhandled  # main() gave the handler back
    err = capsys.readouterr().err
    assert done.value.code == 130, err[-2000:]
    assert "interrupted: 2 of 10 trials done; the study is kept" in err and "Traceback" not in err, err[-2000:]
    study = optuna.load_study(study_name="small-synthetic-loss", storage=f"sqlite:///{tmp_path}/run/study.db")
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials()) == 2
