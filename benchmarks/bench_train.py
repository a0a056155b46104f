"""Proxy-training throughput: the reference and the fast training form side by side in one run;
with ``--pack``, S seeded replicas trained as one pack against S separate runs.

    python benchmarks/bench_train.py                       # 8 candidates of spaces/tiny_cpu.yaml, CPU
    python benchmarks/bench_train.py --spec presets/transxnet_t.yaml --samples 0 --no-trial
    python benchmarks/bench_train.py --json                # the last line is one JSON object
    python benchmarks/bench_train.py --device cuda --dtype bfloat16 --batch-size 256
    python benchmarks/bench_train.py --pack 1,2,4,8 --json  # packs (xnetspace/pack.py)
    python benchmarks/bench_train.py --threads 1 --samples 3 --steps 10 --no-trial --profile

``--pack S,...``: for each spec and each S, a pack of S replicas (seeds 0..S-1, each with its own
batches) takes one step while the S separate networks (the same weights, the same batches) take
one step each, in turn, so load falls on both alike; both in the fast form with fused AdamW.
Printed per spec and S: replica-images per second packed (``packed_img_s``) and separate
(``separate_img_s``), their ratio (``pack_ratio``), the largest relative difference between a
replica's losses in the pack and alone (``max_loss_rel_diff``), and ``batch_bound_img_s``: one
network stepping on an S-times larger batch, the same operators with S times the data, which
bounds what packing can gain (a pack does at least that much work).

For each spec (a fixed seeded sample of the default space's in-budget candidates, plus every
``--spec``), both forms start from the same weights and take the same digits batches, one step of
each in turn (forward, backward, AdamW update), so load from other processes falls on both alike:

- ``reference``: :meth:`TransXNet.set_train_form` ``("reference")``, timm's AdamW as the trainer
  builds it for that form (torch's per-parameter loop on the CPU);
- ``fast``: the fast form with fused AdamW (what proxy training uses by default);

both in the memory format proxy training uses (``training_memory_format``: contiguous NCHW on the
CPU, channels_last on CUDA).

Printed per spec: training images/s of each form (median step), the ratio, achieved GFLOP/s
(a training step counted as 3x the forward FLOPs, fvcore's convention: one multiply-add = one
flop) against a 2048x2048 matmul timed in the same run (n^3 flops by the same convention), the
peak memory of one step (the rise of the resident set, measured after all timings; CUDA: the
allocator's peak), the largest relative difference of the two forms' losses over the timed steps,
and (unless ``--no-trial``) the whole-trial time of the space's recipe (``train_candidate``, 3
epochs of digits) in each form. With ``--profile``, the fast form's five operators of most self
CPU time per spec (``torch.profiler`` over 3 steps after the timings). With ``--cpu-time`` (and
``--threads 1``) the steps are timed in the CPU time of the timing thread, which other processes'
load leaves alone (the matmul's rate and the whole trials stay wall time). Targets (issue 31): CPU,
1 thread, median ratio >= 1.6x, and the whole trials faster by as much.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_model import PeakMemory, interleaved_times

from xnetspace import build_model
from xnetspace.cost import cost_report
from xnetspace.pack import Pack
from xnetspace.search.data import load_dataset
from xnetspace.search.space import load_space
from xnetspace.search.train import TensorBatches, adamw, train_candidate, training_memory_format
from xnetspace.spec import resolve_spec

ROOT = Path(__file__).resolve().parent.parent


def matmul_gflops(device: torch.device, dtype: torch.dtype, n: int = 2048, rounds: int = 5) -> float:
    """GFLOP/s of an n x n matmul (n^3 multiply-adds), the machine's practical peak for this run."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    times = interleaved_times({"mm": lambda: a @ b}, rounds, device)["mm"]
    return n**3 / statistics.median(times) / 1e9


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


def profile_top(stepper: Stepper, steps: int = 3, top: int = 5) -> dict:
    """The ``top`` operators by self CPU time over ``steps`` training steps of ``stepper`` (after one
    warm-up step), from ``torch.profiler``: ``step_ms`` (all operators' self time per step) and
    ``top``, each with its name, self milliseconds and calls per step and share of ``step_ms``."""
    stepper.step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            stepper.step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return dict(
        step_ms=total / 1e3 / steps,
        top=[
            dict(
                op=e.key,
                self_ms=e.self_cpu_time_total / 1e3 / steps,
                share=e.self_cpu_time_total / total,
                calls=e.count / steps,
            )
            for e in events[:top]
        ],
    )


def print_profiles(rows: list) -> None:
    """One table per spec: the fast form's top operators by self time (``--profile``)."""
    for r in rows:
        step_ms = r["profile"]["step_ms"]
        print(f"\n{r['spec']}, fast form: top operators by self CPU time (all operators {step_ms:.1f} ms per step)")
        print("| operator | self ms / step | share | calls / step |")
        print("|---|---|---|---|")
        for p in r["profile"]["top"]:
            print(f"| {p['op']} | {p['self_ms']:.2f} | {100 * p['share']:.1f}% | {p['calls']:.0f} |")


def bench_spec(label: str, spec, data, args, device, autocast, mm_gflops: float) -> dict:
    spec = spec.model_copy(update={"num_classes": data.num_classes, "in_chans": data.in_chans})
    torch.manual_seed(0)
    base = build_model(spec).to(device)
    loader = TensorBatches(
        data.train, args.batch_size, device, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0)
    )
    batch_list = list(loader)
    steppers = {form: Stepper(base, form, batch_list, device, autocast) for form in ("reference", "fast")}
    times = interleaved_times({f: s.step for f, s in steppers.items()}, args.steps, device, args.clock)
    step_s = {f: statistics.median(t) for f, t in times.items()}
    losses = {f: s.losses for f, s in steppers.items()}
    loss_diff = max(abs(a - b) / abs(b) for a, b in zip(losses["fast"], losses["reference"]))
    flops = cost_report(spec, args.image_size).flops
    row = dict(
        spec=label,
        mflops=flops / 1e6,
        step_s=step_s,
        loss_diff=loss_diff,
        img_s={f: args.batch_size / t for f, t in step_s.items()},
    )
    row["ratio"] = row["img_s"]["fast"] / row["img_s"]["reference"]
    row["gflops"] = {f: 3 * flops * v / 1e9 for f, v in row["img_s"].items()}
    row["of_matmul"] = {f: g / mm_gflops for f, g in row["gflops"].items()}
    if args.profile:
        row["profile"] = profile_top(steppers["fast"])
    row["steppers"] = steppers  # kept for the memory probe, dropped before printing
    return row


class PackStepper:
    """S replicas of one spec as a :class:`~xnetspace.pack.Pack` or as S separate networks (the
    same initial weights either way); ``step()`` trains each replica on its next batch."""

    def __init__(self, bases: list, batches: list[list], device: torch.device, packed: bool):
        self.packed, self.i = packed, 0
        nets = [copy.deepcopy(b).set_train_form("fast").train() for b in bases]
        if packed:
            self.pack = Pack(nets)
            self.optimizers = [adamw(self.pack, 1e-3, 0.05, "fast", nets[0])]
            self.batches = [
                (torch.stack([b[i][0] for b in batches]), torch.stack([b[i][1] for b in batches]))
                for i in range(len(batches[0]))
            ]
        else:
            self.nets = nets
            self.optimizers = [adamw(n, 1e-3, 0.05, "fast") for n in nets]
            self.batches = list(zip(*batches))
        self.losses: list[list[float]] = [[] for _ in bases]

    def step(self) -> None:
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        if self.packed:
            x, y = batch
            logits = self.pack(x)
            losses = (
                F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none", label_smoothing=0.1)
                .view(len(self.losses), -1)
                .mean(1)
            )
            total, values = losses.sum(), losses.tolist()
            self.optimizers[0].zero_grad(set_to_none=True)
            total.backward()
            self.optimizers[0].step()
        else:
            values = []
            for net, opt, (x, y) in zip(self.nets, self.optimizers, batch):
                loss = F.cross_entropy(net(x), y, label_smoothing=0.1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                values.append(loss.item())
        for mine, value in zip(self.losses, values):
            mine.append(value)


def bench_pack(label: str, spec, data, args, device, sizes: list[int]) -> dict:
    spec = spec.model_copy(update={"num_classes": data.num_classes, "in_chans": data.in_chans})
    out = {"spec": label, "mflops": cost_report(spec, args.image_size).flops / 1e6, "packs": {}}
    for size in sizes:
        bases, batches = [], []
        for seed in range(size):
            torch.manual_seed(seed)
            bases.append(build_model(spec).to(device))
            batches.append(
                list(
                    TensorBatches(
                        data.train,
                        args.batch_size,
                        device,
                        shuffle=True,
                        drop_last=True,
                        generator=torch.Generator().manual_seed(seed),
                    )
                )
            )
        big = torch.cat([b[0][0] for b in batches]), torch.cat([b[0][1] for b in batches])
        bound = Stepper(bases[0], "fast", [big], device, contextlib.nullcontext)
        runs = {
            "packed": PackStepper(bases, batches, device, True),
            "separate": PackStepper(bases, batches, device, False),
        }
        times = interleaved_times({**{k: v.step for k, v in runs.items()}, "bound": bound.step}, args.steps, device)
        img = {k: size * args.batch_size / statistics.median(t) for k, t in times.items()}
        diff = max(
            abs(a - b) / abs(b) for p, q in zip(runs["packed"].losses, runs["separate"].losses) for a, b in zip(p, q)
        )
        out["packs"][size] = dict(
            packed_img_s=img["packed"],
            separate_img_s=img["separate"],
            pack_ratio=img["packed"] / img["separate"],
            batch_bound_img_s=img["bound"],
            bound_ratio=img["bound"] / img["separate"],
            max_loss_rel_diff=diff,
        )
    return out


def pack_main(args, space, data, specs: dict, device) -> None:
    sizes = sorted({int(s) for s in args.pack.split(",")})
    rows = [bench_pack(label, spec, data, args, device, sizes) for label, spec in specs.items()]
    print(
        f"\npacked training, batch {args.batch_size} per replica, {args.image_size}x{args.image_size}, "
        f"{data.name.split(':')[0]}, {device.type}, {torch.get_num_threads()} threads, fast form "
        f"({args.steps} interleaved steps each, medians); replica-images per second"
    )
    print("| spec | S | packed | separate | pack ratio | S-times batch (bound) | bound ratio | loss rel diff |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        for size, p in r["packs"].items():
            print(
                f"| {r['spec']} | {size} | {p['packed_img_s']:.0f} | {p['separate_img_s']:.0f} "
                f"| {p['pack_ratio']:.2f}x | {p['batch_bound_img_s']:.0f} | {p['bound_ratio']:.2f}x "
                f"| {p['max_loss_rel_diff']:.1e} |"
            )
    summary = dict(
        device=device.type,
        threads=torch.get_num_threads(),
        batch_size=args.batch_size,
        image_size=args.image_size,
        specs=len(rows),
        rows=rows,
        median={},
    )
    for size in sizes:
        summary["median"][size] = {
            key: statistics.median(r["packs"][size][key] for r in rows)
            for key in ("packed_img_s", "separate_img_s", "pack_ratio", "bound_ratio")
        }
        summary["median"][size]["max_loss_rel_diff"] = max(r["packs"][size]["max_loss_rel_diff"] for r in rows)
        m = summary["median"][size]
        print(
            f"S = {size}: median pack ratio {m['pack_ratio']:.2f}x (bound {m['bound_ratio']:.2f}x) over "
            f"{len(rows)} specs; largest loss difference {m['max_loss_rel_diff']:.1e}"
        )
    if args.json:
        print(json.dumps(summary))


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
            result = train_candidate(
                specs[row["spec"]], data, recipe.model_copy(update={"train_form": form, "time_limit": None}), device
            )
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
    parser.add_argument(
        "--profile", action="store_true", help="the fast form's top 5 operators by self CPU time per spec"
    )
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time steps in CPU time of the timing thread (with --threads 1: robust to other processes' load)",
    )
    parser.add_argument("--pack", default=None, help="S,... : packs of S replicas against S separate runs")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time and (args.device != "cpu" or torch.get_num_threads() != 1):
        parser.error("--cpu-time counts one thread's CPU time: it needs --device cpu and --threads 1")
    args.clock = time.thread_time if args.cpu_time else time.perf_counter
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

    if args.pack:
        pack_main(args, space, data, specs, device)
        return
    mm = matmul_gflops(device, dtype)
    rows = [bench_spec(label, spec, data, args, device, autocast, mm) for label, spec in specs.items()]
    peak_memory(rows, device)
    if not args.no_trial:
        whole_trials(
            rows,
            {
                k: v.model_copy(update={"num_classes": data.num_classes, "in_chans": data.in_chans})
                for k, v in specs.items()
            },
            data,
            space.train,
            device,
        )

    print(
        f"\nproxy training step, batch {args.batch_size}, {args.image_size}x{args.image_size}, "
        f"{data.name.split(':')[0]}, {device.type} {args.dtype}, {torch.get_num_threads()} threads "
        f"({args.steps} interleaved steps per form, medians{' of CPU time' if args.cpu_time else ''}); "
        f"2048^2 matmul: {mm:.1f} GFLOP/s"
    )
    print(
        "| spec | MFLOPs | reference img/s | fast img/s | ratio | GFLOP/s ref / fast (% of matmul) "
        "| peak MiB ref / fast | loss rel diff | trial s ref / fast (top-1) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        trial = (
            "-"
            if "trial_s" not in r
            else (
                f"{r['trial_s']['reference']:.1f} / {r['trial_s']['fast']:.1f} "
                f"({r['trial_top1']['reference']:.2f} / {r['trial_top1']['fast']:.2f})"
            )
        )
        print(
            f"| {r['spec']} | {r['mflops']:.2f} | {r['img_s']['reference']:.0f} | {r['img_s']['fast']:.0f} "
            f"| {r['ratio']:.2f}x | {r['gflops']['reference']:.1f} / {r['gflops']['fast']:.1f} "
            f"({100 * r['of_matmul']['reference']:.1f}% / {100 * r['of_matmul']['fast']:.1f}%) "
            f"| {fmt(r['peak_mib']['reference'])} / {fmt(r['peak_mib']['fast'])} | {r['loss_diff']:.1e} | {trial} |"
        )
    if args.profile:
        print_profiles(rows)
    sample = [r for r in rows if r["spec"].startswith(f"{space.name}[")] or rows
    summary = dict(
        device=device.type,
        dtype=args.dtype,
        threads=torch.get_num_threads(),
        batch_size=args.batch_size,
        image_size=args.image_size,
        matmul_gflops=mm,
        specs=len(rows),
        reference_img_s=statistics.median(r["img_s"]["reference"] for r in sample),
        fast_img_s=statistics.median(r["img_s"]["fast"] for r in sample),
        ratio=statistics.median(r["ratio"] for r in sample),
        max_loss_rel_diff=max(r["loss_diff"] for r in rows),
        rows=[dict(r) for r in rows],
    )
    if not args.no_trial:
        summary["trial_s_reference"] = sum(r["trial_s"]["reference"] for r in sample)
        summary["trial_s_fast"] = sum(r["trial_s"]["fast"] for r in sample)
    print(
        f"\nmedian over the {len(sample)} sampled candidates: reference {summary['reference_img_s']:.0f} img/s, "
        f"fast {summary['fast_img_s']:.0f} img/s, ratio {summary['ratio']:.2f}x (target >= 1.6x); "
        f"largest loss difference {summary['max_loss_rel_diff']:.1e}"
    )
    if not args.no_trial:
        print(
            f"whole trials, summed over the sample: reference {summary['trial_s_reference']:.1f} s, "
            f"fast {summary['trial_s_fast']:.1f} s ({summary['trial_s_reference'] / summary['trial_s_fast']:.2f}x)"
        )
    if args.json:
        print(json.dumps(summary))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
