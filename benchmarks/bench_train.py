"""Proxy-training throughput: the reference and the fast training form side by side in one run.

    python benchmarks/bench_train.py                       # 8 candidates of spaces/tiny_cpu.yaml, CPU
    python benchmarks/bench_train.py --spec presets/transxnet_t.yaml --samples 0 --no-trial
    python benchmarks/bench_train.py --json                # the last line is one JSON object
    python benchmarks/bench_train.py --device cuda --dtype bfloat16 --batch-size 256

For each spec (a fixed seeded sample of the default space's in-budget candidates, plus every
``--spec``), both forms start from the same weights and take the same digits batches, one step of
each in turn (forward, backward, AdamW update), so load from other processes falls on both alike:

- ``reference``: :meth:`TransXNet.set_train_form` ``("reference")``, contiguous memory, timm's
  AdamW as the trainer builds it for that form (torch's per-parameter loop on the CPU);
- ``fast``: the fast form, channels_last, fused AdamW (what proxy training uses by default).

Printed per spec: training images/s of each form (median step), the ratio, achieved GFLOP/s
(a training step counted as 3x the forward FLOPs, fvcore's convention: one multiply-add = one
flop) against a 2048x2048 matmul timed in the same run (n^3 flops by the same convention), the
peak memory of one step (the rise of the resident set, measured after all timings; CUDA: the
allocator's peak), the largest relative difference of the two forms' losses over the timed steps,
and (unless ``--no-trial``) the whole-trial time of the space's recipe (``train_candidate``, 3
epochs of digits) in each form. Targets (issue 12): CPU, 2 threads, median ratio >= 2x.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from bench_model import PeakMemory, interleaved_times
from xnetspace import build_model
from xnetspace.cost import cost_report
from xnetspace.search.data import load_dataset
from xnetspace.search.space import load_space
from xnetspace.search.train import TensorBatches, adamw, train_candidate, training_memory_format
from xnetspace.spec import resolve_spec

ROOT = Path(__file__).resolve().parent.parent


def matmul_gflops(device: torch.device, dtype: torch.dtype, n: int = 2048, rounds: int = 5) -> float:
    """GFLOP/s of an n x n matmul (n^3 multiply-adds), the machine's practical peak for this run."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    times = interleaved_times({"mm": lambda: a @ b}, rounds, device)["mm"]
    return n ** 3 / statistics.median(times) / 1e9


class Stepper:
    """One form of one spec: model, optimizer and a cycle of batches; ``step()`` trains one batch."""

    def __init__(self, base: torch.nn.Module, form: str, batches: list, device: torch.device, autocast):
        self.memory_format = training_memory_format(device)
        self.model = copy.deepcopy(base).set_train_form(form).to(memory_format=self.memory_format).train()
        self.optimizer = adamw(self.model, 1e-3, 0.05, form)
        self.batches = [(x.contiguous(memory_format=self.memory_format), y) for x, y in batches]
        self.autocast, self.losses, self.i = autocast, [], 0

    def step(self) -> None:
        x, y = self.batches[self.i % len(self.batches)]
        self.i += 1
        with self.autocast():
            loss = F.cross_entropy(self.model(x), y, label_smoothing=0.1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.losses.append(loss.item())


def bench_spec(label: str, spec, data, args, device, autocast, mm_gflops: float) -> dict:
    spec = spec.model_copy(update={"num_classes": data.num_classes, "in_chans": data.in_chans})
    torch.manual_seed(0)
    base = build_model(spec).to(device)
    loader = TensorBatches(data.train, args.batch_size, device, shuffle=True, drop_last=True,
                           generator=torch.Generator().manual_seed(0))
    batch_list = list(loader)
    steppers = {form: Stepper(base, form, batch_list, device, autocast) for form in ("reference", "fast")}
    times = interleaved_times({f: s.step for f, s in steppers.items()}, args.steps, device)
    step_s = {f: statistics.median(t) for f, t in times.items()}
    losses = {f: s.losses for f, s in steppers.items()}
    loss_diff = max(abs(a - b) / abs(b) for a, b in zip(losses["fast"], losses["reference"]))
    flops = cost_report(spec, args.image_size).flops
    row = dict(spec=label, mflops=flops / 1e6, step_s=step_s, loss_diff=loss_diff,
               img_s={f: args.batch_size / t for f, t in step_s.items()})
    row["ratio"] = row["img_s"]["fast"] / row["img_s"]["reference"]
    row["gflops"] = {f: 3 * flops * v / 1e9 for f, v in row["img_s"].items()}
    row["of_matmul"] = {f: g / mm_gflops for f, g in row["gflops"].items()}
    row["steppers"] = steppers  # kept for the memory probe, dropped before printing
    return row


def peak_memory(rows: list, device: torch.device) -> None:
    """Peak of one step per form, after every timing (the probe slows allocations on the CPU)."""
    probe = PeakMemory(device)
    for row in rows:
        steppers = row.pop("steppers")
        row["peak_mib"] = {f: probe(s.step) for f, s in steppers.items()}
        del steppers


def whole_trials(rows: list, specs: dict, data, recipe, device) -> None:
    for row in rows:
        row["trial_s"], row["trial_top1"] = {}, {}
        for form in ("reference", "fast"):
            result = train_candidate(specs[row["spec"]], data, recipe.model_copy(update={"train_form": form,
                                                                                         "time_limit": None}), device)
            row["trial_s"][form], row["trial_top1"][form] = result.seconds, result.top1


def fmt(value, spec: str = ".0f") -> str:
    return "n/a" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--space", default=str(ROOT / "spaces" / "tiny_cpu.yaml"))
    parser.add_argument("--samples", type=int, default=8, help="seeded random in-budget candidates of --space")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spec", action="append", default=[], help="a spec file or preset (repeatable)")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--image-size", type=int, default=None, help="default: the space's training size")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the space's")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per form and spec")
    parser.add_argument("--no-trial", action="store_true", help="skip the whole-trial timing")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    space = load_space(args.space)
    args.image_size = args.image_size or space.train.image_size
    args.batch_size = args.batch_size or space.train.batch_size
    data = load_dataset(args.dataset, args.image_size)
    sample = space.random_specs(args.samples, seed=args.seed, num_classes=data.num_classes, in_chans=data.in_chans)
    specs = {f"{space.name}[{i}]": s for i, s in enumerate(sample)}  # in budget with the dataset's head and stem
    specs.update({name: resolve_spec(name) for name in args.spec})

    mm = matmul_gflops(device, dtype)
    rows = [bench_spec(label, spec, data, args, device, autocast, mm) for label, spec in specs.items()]
    peak_memory(rows, device)
    if not args.no_trial:
        whole_trials(rows, {k: v.model_copy(update={"num_classes": data.num_classes, "in_chans": data.in_chans})
                            for k, v in specs.items()}, data, space.train, device)

    print(f"\nproxy training step, batch {args.batch_size}, {args.image_size}x{args.image_size}, {data.name.split(':')[0]}, "
          f"{device.type} {args.dtype}, {torch.get_num_threads()} threads ({args.steps} interleaved steps per form, "
          f"medians); 2048^2 matmul: {mm:.1f} GFLOP/s")
    print("| spec | MFLOPs | reference img/s | fast img/s | ratio | GFLOP/s ref / fast (% of matmul) "
          "| peak MiB ref / fast | loss rel diff | trial s ref / fast (top-1) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        trial = "-" if "trial_s" not in r else (
            f"{r['trial_s']['reference']:.1f} / {r['trial_s']['fast']:.1f} "
            f"({r['trial_top1']['reference']:.2f} / {r['trial_top1']['fast']:.2f})")
        print(f"| {r['spec']} | {r['mflops']:.2f} | {r['img_s']['reference']:.0f} | {r['img_s']['fast']:.0f} "
              f"| {r['ratio']:.2f}x | {r['gflops']['reference']:.1f} / {r['gflops']['fast']:.1f} "
              f"({100 * r['of_matmul']['reference']:.1f}% / {100 * r['of_matmul']['fast']:.1f}%) "
              f"| {fmt(r['peak_mib']['reference'])} / {fmt(r['peak_mib']['fast'])} | {r['loss_diff']:.1e} | {trial} |")
    sample = [r for r in rows if r["spec"].startswith(f"{space.name}[")] or rows
    summary = dict(
        device=device.type, dtype=args.dtype, threads=torch.get_num_threads(), batch_size=args.batch_size,
        image_size=args.image_size, matmul_gflops=mm, specs=len(rows),
        reference_img_s=statistics.median(r["img_s"]["reference"] for r in sample),
        fast_img_s=statistics.median(r["img_s"]["fast"] for r in sample),
        ratio=statistics.median(r["ratio"] for r in sample),
        max_loss_rel_diff=max(r["loss_diff"] for r in rows),
        rows=[{k: v for k, v in r.items()} for r in rows],
    )
    if not args.no_trial:
        summary["trial_s_reference"] = sum(r["trial_s"]["reference"] for r in sample)
        summary["trial_s_fast"] = sum(r["trial_s"]["fast"] for r in sample)
    print(f"\nmedian over the {len(sample)} sampled candidates: reference {summary['reference_img_s']:.0f} img/s, "
          f"fast {summary['fast_img_s']:.0f} img/s, ratio {summary['ratio']:.2f}x (target >= 2x); "
          f"largest loss difference {summary['max_loss_rel_diff']:.1e}")
    if not args.no_trial:
        print(f"whole trials, summed over the sample: reference {summary['trial_s_reference']:.1f} s, "
              f"fast {summary['trial_s_fast']:.1f} s ({summary['trial_s_reference'] / summary['trial_s_fast']:.2f}x)")
    if args.json:
        print(json.dumps(summary))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
