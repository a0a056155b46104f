"""What a GPU study relies on, checked and timed in one run; prints one JSON object (the last line).

    bash benchmarks/gpu_check.sh                    # on a machine with one GPU: under 8 minutes
    bash benchmarks/gpu_check.sh --device cpu --tiny  # the same steps at toy sizes (the test suite runs this)

Sections (each also in the JSON, with the seconds it took):

- ``parity``: the release's outputs for a small network (tests/data/parity_small.pt) against ours on
  the device, float32: the largest relative error of the logits and of every stage's map;
- ``deploy``: TransXNet-T in its inference form (``reparameterize()``, channels_last), images/s at
  batch 1, 64 and 256, float32 and bf16 autocast, eager and ``torch.compile`` (the compiled forms at
  the largest batch only), beside the paper's Table XI figure (857 images/s, RTX 3090, batch 128);
- ``packs``: proxy training of ``transxnet_paper`` candidates at 64x64: replica-images/s of a pack
  of S replicas (``xnetspace.pack``, one training step per replica per step) for S = 1 ... 32, and
  of S separate networks stepped in turn, with their ratio;
- ``study``: a 20-trial study of ``transxnet_paper`` (64x64, synthetic data, one proxy epoch, no
  confirmation) with 1, 2 and 4 worker processes per GPU: wall time and trials per minute.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
PAPER_T_IMG_S = 857  # paper Table XI: TransXNet-T, RTX 3090, batch 128


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rate(fn, images: int, device: torch.device, seconds: float) -> float:
    """Images per second of ``fn`` (each call handles ``images``), timed for about ``seconds``."""
    fn()
    _sync(device)
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        _sync(device)
        if time.perf_counter() - start > seconds:
            return calls * images / (time.perf_counter() - start)


def parity(device: torch.device) -> dict:
    from xnetspace import NetworkSpec, build_model, load_weights

    ref = torch.load(ROOT / "tests" / "data" / "parity_small.pt", weights_only=True)
    spec = NetworkSpec.from_official_arch(ref["arch"], image_size=ref["image_size"], num_classes=ref["num_classes"])
    model = load_weights(build_model(spec).eval(), ref["checkpoint"]).to(device)
    with torch.no_grad():
        last, stages = model.forward_intermediates(ref["input"].to(device))
        logits = model.forward_head(last)

    def rel(a, b) -> float:
        return float((a.cpu() - b).abs().max() / b.abs().max())

    return {
        "logits_rel_err": rel(logits, ref["output"]),
        "stages_rel_err": max(rel(a, b) for a, b in zip(stages, ref["stage_outputs"])),
    }


def deploy(
    device: torch.device, batches: list[int], image: int, compile_: bool, seconds: float, spec="transxnet_t"
) -> dict:
    from xnetspace import build_model

    model = build_model(spec).to(device).reparameterize().to(memory_format=torch.channels_last)
    compiled = torch.compile(model) if compile_ else None
    rows = []
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" or not compile_ else [])
    for batch in batches:
        x = torch.randn(batch, 3, image, image, device=device).contiguous(memory_format=torch.channels_last)
        for dtype in dtypes:
            forms = {"eager": model}
            if compiled is not None and batch == max(batches):
                forms["compiled"] = compiled
            for form, net in forms.items():

                def run():
                    with (
                        torch.inference_mode(),
                        torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32),
                    ):
                        net(x)

                rows.append(
                    {
                        "batch": batch,
                        "dtype": str(dtype).removeprefix("torch."),
                        "form": form,
                        "img_s": _rate(run, batch, device, seconds),
                    }
                )
    return {
        "spec": spec if isinstance(spec, str) else spec.name,
        "image_size": image,
        "rows": rows,
        "paper_t_img_s": PAPER_T_IMG_S,
    }


def packs(device: torch.device, sizes: list[int], space: str, image: int, batch: int, steps: int) -> dict:
    import copy

    from xnetspace import build_model
    from xnetspace.pack import Pack
    from xnetspace.search.space import load_space

    spec = load_space(space).random_specs(1, seed=0, num_classes=10, in_chans=3)[0]
    spec = spec.model_copy(update={"image_size": image})
    rows = []
    for size in sizes:
        nets = []
        for seed in range(size):
            torch.manual_seed(seed)
            nets.append(build_model(spec).to(device).set_train_form("fast").train())
        x = torch.randn(size, batch, 3, image, image, device=device)
        y = torch.randint(0, 10, (size, batch), device=device)
        pack = Pack([copy.deepcopy(n) for n in nets])
        popt = torch.optim.AdamW(list(pack.params.values()), lr=1e-3)
        sopt = [torch.optim.AdamW(n.parameters(), lr=1e-3) for n in nets]

        def packed():
            loss = F.cross_entropy(pack(x).flatten(0, 1), y.flatten(), reduction="none").view(size, -1).mean(1).sum()
            popt.zero_grad(set_to_none=True)
            loss.backward()
            popt.step()

        def separate():
            for i, (net, opt) in enumerate(zip(nets, sopt)):
                loss = F.cross_entropy(net(x[i]), y[i])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        timings = {}
        for name, fn in (("packed", packed), ("separate", separate)):
            fn()
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            _sync(device)
            timings[name] = size * batch * steps / (time.perf_counter() - start)
        rows.append(
            {
                "S": size,
                "packed_img_s": timings["packed"],
                "separate_img_s": timings["separate"],
                "pack_ratio": timings["packed"] / timings["separate"],
            }
        )
    return {"space": space, "image_size": image, "batch_per_replica": batch, "rows": rows}


def study(device: str, workers: list[int], space: str, image: int, n_trials: int, dataset: str) -> dict:
    rows = []
    for k in workers:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "xnetspace.cli",
                    "search",
                    "--space",
                    space,
                    "--dataset",
                    dataset,
                    "--image-size",
                    str(image),
                    "--epochs",
                    "1",
                    "--n-trials",
                    str(n_trials),
                    "--confirm-top",
                    "0",
                    "--baseline",
                    "none",
                    "--devices",
                    device,
                    "--workers-per-device",
                    str(k),
                    "--out",
                    out,
                ],
                capture_output=True,
                text=True,
            )
            seconds = time.perf_counter() - start
        rows.append(
            {
                "workers_per_device": k,
                "seconds": seconds,
                "trials_per_minute": 60 * n_trials / seconds,
                "exit": done.returncode,
                "error": done.stderr[-500:] if done.returncode else None,
            }
        )
    return {"space": space, "n_trials": n_trials, "dataset": dataset, "rows": rows}


def _tiny_spec():
    from xnetspace import NetworkSpec

    ref = torch.load(ROOT / "tests" / "data" / "parity_small.pt", weights_only=True)
    return NetworkSpec.from_official_arch(ref["arch"], image_size=32, num_classes=10, name="parity_small")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="toy sizes, for a smoke test of every step")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA device here; use --device cpu --tiny for a smoke test")
    tiny = args.tiny
    report = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "tiny": tiny,
    }
    space = str(ROOT / "tests" / "data" / "gpu_check_space.yaml") if tiny else "transxnet_paper"
    sections = {
        "parity": lambda: parity(device),
        "deploy": lambda: deploy(
            device,
            [1, 2] if tiny else [1, 64, 256],
            32 if tiny else 224,
            compile_=not tiny,
            seconds=0.2 if tiny else 2.0,
            spec=_tiny_spec() if tiny else "transxnet_t",
        ),
        "packs": lambda: packs(
            device,
            [1, 2] if tiny else [1, 2, 4, 8, 16, 32],
            space,
            16 if tiny else 64,
            4 if tiny else 128,
            1 if tiny else 10,
        ),
        "study": lambda: study(
            args.device,
            [1, 2] if tiny else [1, 2, 4],
            space,
            16 if tiny else 64,
            2 if tiny else 20,
            "synthetic:64" if tiny else "synthetic:2048",
        ),
    }
    for name, section in sections.items():
        start = time.perf_counter()
        try:
            report[name] = section()
        except Exception as err:  # noqa: BLE001 - a section that fails is reported, the others still run
            report[name] = {"error": f"{type(err).__name__}: {err}"}
        report[name]["seconds"] = round(time.perf_counter() - start, 1)
        print(f"{name}: {json.dumps(report[name])}", file=sys.stderr, flush=True)
    report["ok"] = all("error" not in report[n] for n in sections) and all(
        r["exit"] == 0 for r in report["study"].get("rows", [])
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
