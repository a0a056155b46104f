"""The latency landscape of a space (issue 33, item 1): at equal FLOPs, how far apart do its specs run?

    python benchmarks/bench_latency.py fashion_cpu                          # 24 specs, CPU, batch 1, 1 thread
    python benchmarks/bench_latency.py tiny_cpu --specs 24 --batch-size 32 --threads 2
    python benchmarks/bench_latency.py fashion_cpu --device cuda --batch-size 256 --json

For N distinct in-budget specs of SPACE (``SearchSpace.distinct_specs``, seed 0; 1 input channel and
10 classes, as Fashion-MNIST and digits give): the latency of the inference form (``reparameterize()``,
eval, ``xnetspace.latency.fastest_latencies``: torch.utils.benchmark's median in each of ``--rounds``
rounds over all the specs, the fastest round kept; warm-up and CUDA synchronisation included) at
the space's image size, and of one training step of the fast
training form at ``--train-batch-size`` (forward, cross-entropy, backward, AdamW update; median of
``--steps`` after two warm-up steps). Per spec: MFLOPs and params from the cost model (fvcore's
count: one multiply-add = one flop), milliseconds, milliseconds per MFLOP. Over the specs: the spread
of latency per MFLOP (max/min), Spearman's rho (``scipy.stats.spearmanr``) of latency with FLOPs and with params, and
the share of inference time each operator kind takes (stem, downsample, IDConv, OSRA, STE, MS-FFN,
head; the rest of each block, norms, projections and residual sums, as "other"), timed with
forward hooks on one batch per spec after the warm-up (hooks add a little time to every kind).

Run it on an idle machine: other processes change every figure (timings vary 20-30% between runs
on the project's 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from scipy import stats

from xnetspace.cost import cost_report, parse_image_size
from xnetspace.latency import fastest_latencies
from xnetspace.model import build_model
from xnetspace.search.space import load_space
from xnetspace.spec import NetworkSpec

KINDS = {  # module class -> operator kind (the inference form's classes)
    "FusedIDConv": "IDConv",
    "FusedOSRA": "OSRA",
    "FusedSTE": "STE",
    "FusedMSFFN": "MS-FFN",
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def operator_profile(model: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Milliseconds of one forward pass of ``x`` by operator kind (forward hooks; inclusive times,
    kinds do not nest), ``total`` and ``other`` (what no kind covers)."""
    device, spent = x.device, defaultdict(float)
    starts: dict[int, float] = {}
    named = {model.stem: "stem", **dict.fromkeys(model.head.children(), "head")}  # forward_head calls the parts
    for stage in model.stages:
        named[stage.downsample] = "downsample"
    for module in model.modules():
        if type(module).__name__ in KINDS:
            named[module] = KINDS[type(module).__name__]

    def before(module, _):
        _sync(device)
        starts[id(module)] = time.perf_counter()

    def after(module, _, __):
        _sync(device)
        spent[named[module]] += 1e3 * (time.perf_counter() - starts.pop(id(module)))

    handles = [h for m in named for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    try:
        with torch.inference_mode():
            _sync(device)
            start = time.perf_counter()
            model(x)
            _sync(device)
            total = 1e3 * (time.perf_counter() - start)
    finally:
        for handle in handles:
            handle.remove()
    return {**spent, "other": max(0.0, total - sum(spent.values())), "total": total}


def training_step_ms(spec: NetworkSpec, x: torch.Tensor, steps: int) -> float:
    """Median milliseconds of one training step (fast form, AdamW) on ``x`` with random labels."""
    model = build_model(spec).to(x.device).train()
    model.set_train_form("fast")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    labels = torch.randint(0, spec.num_classes, (x.shape[0],), device=x.device)
    times = []
    for i in range(steps + 2):  # two warm-up steps
        _sync(x.device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), labels).backward()
        optimizer.step()
        _sync(x.device)
        if i >= 2:
            times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def _spearman(x: list[float], y: list[float]) -> dict[str, float]:
    result = stats.spearmanr(x, y)
    return {"rho": float(result.statistic), "p": float(result.pvalue)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("space")
    parser.add_argument("--specs", type=int, default=24)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per spec (0: none)")
    parser.add_argument(
        "--train-batch-size", type=int, default=32, help="batch of the training step (BatchNorm needs 2+)"
    )
    parser.add_argument(
        "--min-run-time", type=float, default=0.3, help="seconds of inference timing per spec and round"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the specs; each spec's fastest is kept")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    space = load_space(args.space)
    size = space.constraints.image_size
    h, w = parse_image_size(size)
    specs = space.distinct_specs(args.specs, 0, "lat", in_chans=1, num_classes=10)
    models = [(spec, build_model(spec).reparameterize().to(device)) for spec in specs]
    latencies = fastest_latencies(models, args.batch_size, size, device, args.min_run_time, args.rounds)
    rows = []
    for (spec, model), latency in zip(models, latencies):
        cost = cost_report(spec, size)
        x = torch.randn(args.batch_size, spec.in_chans, h, w, device=device)
        row = {
            "name": spec.name,
            "mflops": cost.flops / 1e6,
            "params": cost.params,
            "ms": latency,
            "ms_per_mflop": latency / (cost.flops / 1e6),
            "profile_ms": operator_profile(model, x),
            "train_step_ms": training_step_ms(
                spec, torch.randn(args.train_batch_size, *x.shape[1:], device=device), args.steps
            )
            if args.steps
            else None,
        }
        rows.append(row)
        if not args.json:
            step = f"  train step {row['train_step_ms']:.2f} ms" if args.steps else ""
            print(f"{spec.name:16s} {row['mflops']:6.2f} MFLOPs {row['params']:>9,} params  {latency:7.3f} ms  "
                  f"{row['ms_per_mflop']:.3f} ms/MFLOP{step}", flush=True)  # fmt: skip
    per = [r["ms_per_mflop"] for r in rows]
    shares: dict[str, float] = defaultdict(float)
    for r in rows:
        for kind, ms in r["profile_ms"].items():
            if kind != "total":
                shares[kind] += ms / r["profile_ms"]["total"] / len(rows)
    summary = {
        "space": space.name,
        "device": str(device),
        "batch_size": args.batch_size,
        "threads": args.threads,
        "specs": len(rows),
        "ms": [min(r["ms"] for r in rows), statistics.median(r["ms"] for r in rows), max(r["ms"] for r in rows)],
        "ms_per_mflop": [min(per), statistics.median(per), max(per)],
        "ms_per_mflop_spread": max(per) / min(per),
        "spearman_flops": _spearman([r["mflops"] for r in rows], [r["ms"] for r in rows]),
        "spearman_params": _spearman([r["params"] for r in rows], [r["ms"] for r in rows]),
        "time_share_by_kind": dict(sorted(shares.items(), key=lambda kv: -kv[1])),
    }
    print(json.dumps({"summary": summary, "specs": rows} if args.json else summary, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
