"""Does a training seed move every spec alike? Retrains specs of a finished study with two seeds.

    python benchmarks/seed_shift.py RUN [--count 7] [--width 128] [--seeds 0 1]

Takes the first COUNT candidates of the study in RUN whose last stage is WIDTH wide, retrains
each under the study's own recipe and dataset with each seed (``train_seeds``, one pack per spec;
the time limit lifted), and prints per spec the validation cross-entropy (nats) of each seed and
the second seed minus the first. A difference of one sign on every spec is a shift shared by the
whole study: populations trained with different seeds are not comparable (docs/design_spaces.md,
section 2, measured 0.013 to 0.036 nats, mean 0.020, on the default task's runs/ds/pop0 with
seeds 0 and 1).
"""

from __future__ import annotations

import argparse

import numpy as np

from xnetspace.search.analysis_data import load_run, study_data
from xnetspace.search.data import load_dataset
from xnetspace.search.train import train_seeds
from xnetspace.spec import NetworkSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--count", type=int, default=7)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs=2, default=[0, 1])
    args = parser.parse_args()
    study = study_data(load_run(args.run))
    recipe = study.config.train.model_copy(update={"time_limit": None})
    data = load_dataset(study.config.dataset, recipe.image_size, recipe.seed)
    chosen = [c for c in study.candidates if c.spec and c.spec["stages"][-1]["embed_dim"] == args.width]
    shifts = []
    for c in chosen[: args.count]:
        first, second = train_seeds(NetworkSpec.model_validate(c.spec), data, args.seeds, recipe)
        a, b = first.loss_history[-1], second.loss_history[-1]
        shifts.append(b - a)
        print(f"trial {c.number}: seed {args.seeds[0]} {a:.4f}, seed {args.seeds[1]} {b:.4f}, difference {b - a:+.4f}")
    if shifts:
        print(f"{len(shifts)} specs: difference {min(shifts):+.4f} to {max(shifts):+.4f}, mean {np.mean(shifts):+.4f}")


if __name__ == "__main__":
    main()
