"""Do a space's architectures differ beyond seed noise on a task? A random population trained with
several seeds, resumable, with the figures that decide a space, band and recipe (issue 29).

    python benchmarks/landscape.py SPACE --dataset fashion-mnist:10000 --specs 12 --seeds 2 --out runs/land/a
    python benchmarks/landscape.py tiny_cpu --dataset digits --specs 12 --seeds 3 --out runs/land/digits
    python benchmarks/landscape.py SPACE ... --out DIR --report      # the figures of what DIR holds

Draws SPECS distinct in-budget specs of SPACE (``SearchSpace.distinct_specs``, seed 0), adds the
preset TransXNet-T scaled to the space's budget (``--baseline``, the control every study confirms),
and trains each with SEEDS seeds under the space's recipe (``train_seeds``, one pack per spec; the
time limit lifted; ``--epochs``/``--batch-size`` override it), scoring each seed on the validation
split (``--split test``: the held-out one). Every finished spec is appended to ``DIR/runs.jsonl``
at once, so a killed run resumes where it stopped and trains nothing twice; ``--shard I/N`` lets N
processes (one per core) share the population, each appending its own specs to the same file, and
``--part A:B`` trains only specs A..B-1 (a second process growing a population to B specs); a
process skips a spec another one has finished or holds (``DIR/DIGEST.claim``, its PID). The
figures add the seed-blocked ANOVA (``stats.blocked_separation``) and the same figures after each
epoch (``by_epoch``).

Printed (``--json``: one object): per spec its knobs, MFLOPs, each seed's cross-entropy (nats) and
top-1 (%), and the pack's wall time; over the population, by cross-entropy and by top-1:
``stats.separation`` (the std of the specs' means, the pooled seed std, the architecture std with
the seed noise of the means taken out, one-way ANOVA F and p), best/median/worst mean, and the
knobs' fANOVA importances (Optuna's evaluator over the spec means, as ``xnetspace analyze`` gives
them); and the CPU seconds spent, for "separation per CPU-hour".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import optuna
import torch

from xnetspace.cost import cost_report
from xnetspace.search.confirmation import baseline_spec
from xnetspace.search.data import default_dataset, load_dataset
from xnetspace.search.space import RandomTrial, load_space
from xnetspace.search.stats import blocked_separation, separation
from xnetspace.search.train import train_seeds
from xnetspace.spec import NetworkSpec


class _Recorder(RandomTrial):
    """A random trial that also records the Optuna distribution of each parameter (for fANOVA)."""

    def __init__(self, rng):
        super().__init__(rng)
        self.distributions: dict[str, optuna.distributions.BaseDistribution] = {}

    def suggest_categorical(self, name, choices):
        self.distributions[name] = optuna.distributions.CategoricalDistribution(choices)
        return super().suggest_categorical(name, choices)

    def suggest_int(self, name, low, high, step=1, log=False):
        self.distributions[name] = optuna.distributions.IntDistribution(low, high, step=step, log=log)
        return super().suggest_int(name, low, high, step=step, log=log)

    def suggest_float(self, name, low, high, step=None, log=False):
        self.distributions[name] = optuna.distributions.FloatDistribution(low, high, step=step, log=log)
        return super().suggest_float(name, low, high, step=step, log=log)


def population(space, count: int, in_chans: int, num_classes: int) -> list[tuple[NetworkSpec, dict, dict]]:
    """``count`` distinct in-budget specs with their Optuna params and distributions, drawn in order."""
    import random

    rng, seen, out = random.Random(0), set(), []
    for _ in range(200 * count + 1000):
        if len(out) == count:
            break
        trial = _Recorder(rng)
        try:
            spec = space.sample(trial, in_chans=in_chans, num_classes=num_classes)
        except ValueError:
            continue
        if spec.digest() in seen or space.violations(spec):
            continue
        seen.add(spec.digest())
        out.append((spec, trial.params, trial.distributions))
    return out


def importances(rows: list[dict], distributions: dict, key: str) -> dict[str, float]:
    """fANOVA importances (Hutter et al. 2014, Optuna's evaluator) of the knobs for the specs' means."""
    study = optuna.create_study()
    for row in rows:
        if row["params"] is None:
            continue
        dists = {k: distributions[k] for k in row["params"]}
        study.add_trial(
            optuna.trial.create_trial(params=row["params"], distributions=dists, value=statistics.mean(row[key]))
        )
    if len(study.trials) < 4:
        return {}
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    return {k: round(v, 3) for k, v in optuna.importance.get_param_importances(study, evaluator=evaluator).items()}


def summary(rows: list[dict], distributions: dict) -> dict:
    specs = [r for r in rows if r["params"] is not None]
    out = {"specs": len(specs), "cpu_seconds": round(sum(r["seconds"] for r in rows), 1)}
    for key in ("loss", "top1"):
        means = sorted(statistics.mean(r[key]) for r in specs)
        out[key] = {
            **{k: round(v, 5) for k, v in separation([r[key] for r in specs]).items() if not isinstance(v, bool)},
            "blocked": {k: round(v, 5) for k, v in blocked_separation([r[key] for r in specs]).items()},
            "best_median_worst": [round(v, 4) for v in (means[0], statistics.median(means), means[-1])]
            if key == "loss"
            else [round(v, 2) for v in (means[-1], statistics.median(means), means[0])],
            "fanova": importances(specs, distributions, key),
        }
    base = [r for r in rows if r["params"] is None]
    if base:
        out["baseline"] = {k: base[0][k] for k in ("name", "mflops", "loss", "top1")}
    return out


def _claim(out: Path, digest: str) -> bool:
    """Whether this process may train ``digest``: nobody finished it (another process may have since
    this one started) and no live process holds its claim file (a dead one's claim is taken over)."""
    log = out / "runs.jsonl"
    if log.exists() and any(json.loads(line)["digest"] == digest for line in log.read_text().splitlines()):
        return False
    claim = out / f"{digest}.claim"
    try:
        holder = int(claim.read_text() or 0)
        os.kill(holder, 0)
        return holder == os.getpid()
    except (FileNotFoundError, ValueError, ProcessLookupError):
        claim.write_text(str(os.getpid()))  # two processes racing here both train it: nothing worse
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("space")
    parser.add_argument("--dataset", default=None, help="default: the space's task (data.default_dataset)")
    parser.add_argument("--specs", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--split", choices=["val", "test"], default="val")
    parser.add_argument("--baseline", default="transxnet_t", help="a preset scaled to the budget, or 'none'")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shard", default="0/1", help="I/N: train only every N-th spec from the I-th (N processes)")
    parser.add_argument("--part", default=":", help="A:B: train only the population's specs A to B-1 (and no baseline)")
    parser.add_argument("--report", action="store_true", help="only print the figures of what --out holds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    space = load_space(args.space)
    update = {"time_limit": None}
    update |= {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size)) if v is not None}
    recipe = space.train.model_copy(update=update)
    dataset = args.dataset if args.dataset is not None else default_dataset(space.dataset)[0]
    data = load_dataset(dataset, recipe.image_size, recipe.seed)
    if args.split == "test":
        data = data.held_out()
    members = population(space, args.specs, data.in_chans, data.num_classes)
    distributions = {k: d for _, _, dists in members for k, d in dists.items()}
    todo = [(spec, params) for spec, params, _ in members]
    if args.baseline != "none":
        todo.append((baseline_spec(args.baseline, space, data.num_classes, data.in_chans), None))
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "runs.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    if args.report:  # the other shards' rows too, in the population's order
        order = {spec.digest(): i for i, (spec, _) in enumerate(todo)}
        rows = sorted((r for r in rows if r["digest"] in order), key=lambda r: order[r["digest"]])
    done = {r["digest"] for r in rows}
    index, shards = (int(x) for x in args.shard.split("/"))
    if args.part != ":":  # a second process growing a population another one is training
        start, _, stop = args.part.partition(":")
        todo = [t for t in todo if t[1] is not None][int(start or 0) : int(stop) if stop else None]
    for spec, params in todo[index::shards]:
        if args.report or spec.digest() in done or not _claim(args.out, spec.digest()):
            continue
        start = time.perf_counter()
        results = train_seeds(spec, data, list(range(args.seeds)), recipe)
        row = {
            "name": spec.name,
            "digest": spec.digest(),
            "params": params,
            "mflops": round(cost_report(spec, space.constraints.image_size).flops / 1e6, 3),
            "loss": [r.loss for r in results],
            "top1": [r.top1 for r in results],
            "loss_epochs": [r.loss_history for r in results],  # per seed, the score after each epoch
            "top1_epochs": [r.history for r in results],
            "seconds": round(time.perf_counter() - start, 1),
        }
        rows.append(row)
        with log.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if not args.json:
            print(f"{row['name']:28s} {row['mflops']:7.2f} MFLOPs  loss {np.round(row['loss'], 4)}  "
                  f"top-1 {np.round(row['top1'], 2)}  {row['seconds']:.0f} s", flush=True)  # fmt: skip
    result = {"space": space.name, "dataset": dataset, "seeds": args.seeds, "recipe": recipe.model_dump()}
    result |= summary(rows, distributions)
    epochs = min((len(e) for r in rows for e in r.get("loss_epochs", [])), default=0)
    result["by_epoch"] = []  # the same runs scored after each epoch (a shorter recipe's figures, nearly)
    specs = [r for r in rows if r["params"] is not None]
    for e in range(epochs):
        figures = {"epoch": e + 1}
        for k in ("loss", "top1"):
            scores = [[s[e] for s in r[f"{k}_epochs"]] for r in specs]
            figures[k] = {m: round(v, 5) for m, v in separation(scores).items() if not isinstance(v, bool)}
            figures[k]["blocked_p"] = round(blocked_separation(scores)["p"], 5)
        result["by_epoch"].append(figures)
    print(json.dumps(result, indent=None if args.json else 2, default=str))


if __name__ == "__main__":
    main()
