"""Reference vs deploy TransXNet, side by side in one run: images/s, latency, peak memory, ratios.

    python benchmarks/bench_model.py                                 # CPU float32: T/S/B, batch 1 and 32, training step
    python benchmarks/bench_model.py --presets transxnet_t --batch-sizes 1 32 --train-batch-size 32
    python benchmarks/bench_model.py --no-compile --no-train --attention   # quick, plus the attention kernels
    python benchmarks/bench_model.py --device cuda --dtype bfloat16 --batch-sizes 128 --compile-presets all

Forms (``--forms``): ``reference`` (the training form in eval mode), ``reference_cl``,
``reference_compiled``, ``deploy`` (``model.reparameterize()``), ``deploy_cl`` (+ channels_last),
``deploy_cl_compiled`` (+ ``torch.compile``, for ``--compile-presets`` only; compile time and graph
breaks printed apart). Each round times one batch of every form in turn, so load from other
processes falls on all forms alike; tables give medians and the ratio to ``reference``. Peak memory
is the rise above the resting state during one batch (after a warm-up batch), measured apart in a
fresh process per form so that it never slows the timings: the resident set on the CPU (Linux
VmHWM, reset through /proc/self/clear_refs, with a small fixed mmap threshold so that freed tensors
leave the resident set), the allocator peak on CUDA. bfloat16 runs under autocast. The training section
times SGD steps (forward, backward, update) of the reference form with and without gradient
checkpointing, interleaved, with their peak memory.

Targets (issue 5), CPU, 2 threads, 224x224, TransXNet-T: the fastest form >= 1.5x the reference's
images/s at batch 1 and >= 1.3x at batch 32, ``deploy`` alone >= 1.2x; checkpointing cuts the
training step's peak memory by >= 30% at batch 32. GPU: the best form >= 2x the reference in
float32 eager; paper Table XI (RTX 3090, batch 128): T 857, S 417, B 250 images/s.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from xnetspace import build_model, load_preset
from xnetspace.model.osra import OSRA

ALL_FORMS = ["reference", "reference_cl", "reference_compiled", "deploy", "deploy_cl", "deploy_cl_compiled"]
PAPER_TABLE_XI = {"transxnet_t": 857, "transxnet_s": 417, "transxnet_b": 250}  # RTX 3090, batch 128


# -- measuring -------------------------------------------------------------------------------------
class PeakMemory:
    """Peak memory (MiB) above the resting state while ``fn`` runs; None where not measurable."""

    def __init__(self, device: torch.device):
        self.device = device
        self.linux = device.type == "cpu" and os.path.exists("/proc/self/clear_refs")
        if self.linux:  # freed tensors go back to the OS at once, so the resident set follows live memory;
            # this slows large allocations, hence a separate process (probe_memory) for measuring
            ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD (fixed: no dynamic raise)

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            return int(re.search(rf"{key}:\s+(\d+) kB", f.read()).group(1)) * 1024

    def __call__(self, fn: Callable[[], object]) -> float | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - base) / 2**20
        if not self.linux:
            return None
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
        base = self._status("VmRSS")
        fn()
        return (self._status("VmHWM") - base) / 2**20


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved_times(
    fns: dict[str, Callable[[], object]],
    rounds: int,
    device: torch.device,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds per call of every function, one call of each per round (after one warm-up call), by
    ``clock`` (wall time; ``time.thread_time`` counts only this thread's CPU time, which other
    processes' load leaves alone when torch runs on this one thread)."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            sync(device)
            start = clock()
            fn()
            sync(device)
            times[name].append(clock() - start)
    return times


def probe_memory(args, kind: str) -> float | None:
    """Peak MiB of ``kind`` (``eval:FORM`` or ``train:CONFIG``) for the first preset and batch size
    in ``args``, measured by this script in a fresh process (``--probe``); None if it failed."""
    cmd = [
        sys.executable,
        __file__,
        "--probe",
        kind,
        "--presets",
        args.presets[0],
        "--batch-sizes",
        str(args.batch_sizes[0]),
        "--image-size",
        str(args.image_size),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--train-preset",
        args.train_preset,
        "--train-batch-size",
        str(args.train_batch_size),
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = re.findall(r"^PEAK_MIB (\S+)$", done.stdout, re.M)
    return None if not found or found[-1] == "None" else float(found[-1])


def run_probe(args, device: torch.device, autocast) -> None:
    """Child side of probe_memory: one warm-up call, then the peak of one measured call."""
    memory = PeakMemory(device)
    kind, name = args.probe.split(":")
    if kind == "eval":
        x = torch.randn(args.batch_sizes[0], 3, args.image_size, args.image_size, device=device)
        fn, _ = make_form(build_model(args.presets[0]).to(device).eval(), name, x, autocast)
    else:
        fn = train_steps(args, device, autocast)[name]
    fn()
    print(f"PEAK_MIB {memory(fn)}")


def graph_breaks() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values())


# -- eval section ----------------------------------------------------------------------------------
def make_form(base: torch.nn.Module, form: str, x: torch.Tensor, autocast) -> tuple[Callable, str | None]:
    """A callable running ``form`` on ``x`` (compiled ones compiled here) and a note (compile time)."""
    model = copy.deepcopy(base)
    if form.startswith("deploy"):
        model.reparameterize()
    if "_cl" in form:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    note = None
    if form.endswith("compiled"):
        torch._dynamo.reset()
        from torch._dynamo.utils import counters

        counters.clear()
        model = torch.compile(model)
        start = time.perf_counter()
        with torch.inference_mode(), autocast():
            model(x)
        sync(x.device)
        note = f"compile {time.perf_counter() - start:.0f} s, {graph_breaks()} graph breaks"

    def run():
        with torch.inference_mode(), autocast():
            return model(x)

    return run, note


def bench_eval(args, device: torch.device, autocast) -> None:
    for preset in args.presets:
        base = build_model(preset).to(device).eval()
        compile_ok = args.compile_presets == ["all"] or preset in args.compile_presets
        forms = [f for f in args.forms if compile_ok or not f.endswith("compiled")]
        for batch in args.batch_sizes:
            x = torch.randn(batch, 3, args.image_size, args.image_size, device=device)
            fns, notes = {}, {}
            for form in forms:
                try:
                    fns[form], notes[form] = make_form(base, form, x, autocast)
                except Exception as err:  # noqa: BLE001 - e.g. no C++ compiler for inductor: skip the form
                    print(f"  {form}: unavailable ({type(err).__name__}: {str(err).splitlines()[0][:120]})")
            rounds = args.iters or (20 if batch <= 4 else 5)
            times = interleaved_times(fns, rounds, device)
            med = {f: statistics.median(t) for f, t in times.items()}
            del fns  # free the forms before the memory probes run
            one = argparse.Namespace(**{**vars(args), "presets": [preset], "batch_sizes": [batch]})
            peaks = {f: probe_memory(one, f"eval:{f}") for f in med}
            ref = med.get("reference")
            title = f"{preset}, batch {batch}, {args.image_size}x{args.image_size}, {device.type} {args.dtype}"
            print(f"\n{title} ({rounds} interleaved rounds, medians)")
            paper = (
                f"  paper Table XI: {PAPER_TABLE_XI[preset]}"
                if device.type == "cuda" and preset in PAPER_TABLE_XI
                else ""
            )
            print(f"| form | images/s | latency ms | peak MiB | vs reference |{paper}")
            print("|---|---|---|---|---|")
            for form, t in med.items():
                peak = "n/a" if peaks[form] is None else f"{peaks[form]:.0f}"
                ratio = f"{ref / t:.2f}x" if ref else "-"
                extra = f"  ({notes[form]})" if notes.get(form) else ""
                print(f"| {form} | {batch / t:.2f} | {t * 1e3:.1f} | {peak} | {ratio} |{extra}")
            sys.stdout.flush()


# -- training section ------------------------------------------------------------------------------
def train_steps(args, device: torch.device, autocast) -> dict[str, Callable[[], None]]:
    """SGD steps of the reference form (``train_preset``), without and with gradient checkpointing."""
    torch.manual_seed(0)
    model = build_model(args.train_preset).to(device).train()
    batch = args.train_batch_size
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, model.num_classes, (batch,), device=device)

    def step(checkpointing: bool) -> Callable[[], None]:
        def run():
            model.set_grad_checkpointing(checkpointing)
            opt.zero_grad(set_to_none=True)
            with autocast():
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()

        return run

    return {"plain": step(False), "checkpointing": step(True)}


def bench_train(args, device: torch.device, autocast) -> None:
    preset, batch = args.train_preset, args.train_batch_size
    times = interleaved_times(train_steps(args, device, autocast), args.train_steps, device)
    med = {k: statistics.median(v) for k, v in times.items()}
    peaks = {k: probe_memory(args, f"train:{k}") for k in med}
    print(
        f"\ntraining step (SGD), {preset}, batch {batch}, {args.image_size}x{args.image_size}, "
        f"{device.type} {args.dtype} ({args.train_steps} interleaved steps, medians)"
    )
    print("| form | images/s | step s | peak MiB | vs plain |")
    print("|---|---|---|---|---|")
    for k, t in med.items():
        peak = "n/a" if peaks[k] is None else f"{peaks[k]:.0f}"
        mem = "" if None in peaks.values() else f", memory {peaks[k] / peaks['plain']:.2f}x"
        print(f"| reference, {k} | {batch / t:.2f} | {t:.2f} | {peak} | speed {med['plain'] / t:.2f}x{mem} |")


# -- attention kernels -----------------------------------------------------------------------------
def bench_attention(args, device: torch.device, autocast) -> None:
    """OSRA alone per stage of the first preset: explicit matmuls (reference) vs baddbmm vs SDPA."""
    spec = load_preset(args.presets[0])
    print(f"\nOSRA attention, {spec.name} stages at {args.image_size}x{args.image_size}, {device.type} {args.dtype}")
    print("| stage | batch | N x M | heads | reference ms | baddbmm ms | SDPA ms |")
    print("|---|---|---|---|---|---|---|")
    for i, (stage, (h, w)) in enumerate(zip(spec.stages, spec.stage_sizes(args.image_size))):
        if not stage.attn_channels:
            continue
        osra = OSRA(stage.attn_channels, stage.num_heads, stage.sr_ratio).to(device).eval()
        fused = osra.fuse()
        explicit, sdpa = copy.deepcopy(fused), copy.deepcopy(fused)
        explicit.fused_attn, sdpa.fused_attn = False, True
        for batch in args.batch_sizes:
            x = torch.randn(batch, stage.attn_channels, h, w, device=device)
            m = osra.sr(x).shape[-2:].numel()
            bias = torch.randn(1, stage.num_heads, h * w, m, device=device)
            fns = {
                name: (lambda mod=mod: mod(x, bias))
                for name, mod in (("reference", osra), ("baddbmm", explicit), ("sdpa", sdpa))
            }
            with torch.inference_mode(), autocast():
                times = interleaved_times(fns, args.iters or 20, device)
            ms = [statistics.median(times[k]) * 1e3 for k in fns]
            print(
                f"| {i + 1} | {batch} | {h * w} x {m} | {stage.num_heads} | "
                + " | ".join(f"{t:.3f}" for t in ms)
                + " |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["transxnet_t", "transxnet_s", "transxnet_b"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--forms", nargs="+", choices=ALL_FORMS, default=["reference", "deploy", "deploy_cl", "deploy_cl_compiled"]
    )
    parser.add_argument(
        "--compile-presets",
        nargs="+",
        default=["transxnet_t"],
        help="presets whose compiled forms run ('all' for every preset); compiling T takes ~90 s on 2 cores",
    )
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled forms")
    parser.add_argument("--iters", type=int, default=None, help="interleaved rounds (default 20 at batch <= 4, else 5)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-train", action="store_true", help="leave out the training-step section")
    parser.add_argument("--train-preset", default="transxnet_t")
    parser.add_argument("--train-batch-size", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=3, help="interleaved steps per configuration")
    parser.add_argument("--attention", action="store_true", help="also time OSRA's attention paths per stage")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: measure one form's memory (probe_memory)
    args = parser.parse_args()
    if args.no_compile:
        args.forms = [f for f in args.forms if not f.endswith("compiled")]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.dtype == "bfloat16":

        def autocast():
            return torch.autocast(device.type, dtype=torch.bfloat16)
    else:
        autocast = nullcontext
    if args.probe:
        return run_probe(args, device, autocast)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"torch {torch.__version__}, {where}, load average at start {os.getloadavg()[0]:.2f}")
    start = time.perf_counter()
    bench_eval(args, device, autocast)
    if args.attention:
        bench_attention(args, device, autocast)
    if not args.no_train:
        bench_train(args, device, autocast)
    print(
        f"\ntotal {math.ceil(time.perf_counter() - start)} s, load average at end {os.getloadavg()[0]:.2f} "
        "(other processes on the machine slow every form alike but blur the ratios)"
    )


if __name__ == "__main__":
    main()
