"""The random-search control at equal compute (``--baseline random:auto``).

Li & Talwalkar (UAI 2019, "Random Search and Reproducibility for Neural Architecture Search")
showed that random search given the same budget is the control every NAS result needs. Here it is
the study itself with a random sampler: a second study, ``NAME:random``, in the same storage, whose
trials run the very same objective (the same budget, proxy recipe, seeds, racing and pruner), and
which trains until it has spent as much proxy training as the search did, counted in replica-epochs
(one epoch of one seed's run; a pruned run counts the epochs it trained). Its best trial by the same
proxy score is then confirmed exactly as the search's candidates are.

Its slots are queued one at a time, only while the compute spent and in flight stays below the
search's, so it stops within one trial's compute of the search's (the summary gives both).
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from .records import is_live, read_trial, slot_attrs
from .storage import connect_storage
from .study import StudyAddress, StudyConfig, candidates, live_slots, make_pruner

__all__ = ["CONTROL_SUFFIX", "open_control_study", "spent", "control_top_up", "control_best"]

CONTROL_SUFFIX = ":random"


def open_control_study(
    config: StudyConfig, address: StudyAddress, seed: int, pruner: str | None, worker: int = 0
) -> optuna.Study:
    """The study ``NAME:random`` beside the search's at ``address``: the search's objective with a
    random sampler (seeded apart from the search's ``seed``) and the search's ``pruner``."""
    return optuna.create_study(
        storage=connect_storage(address.storage_url, address.heartbeat),
        study_name=address.study_name + CONTROL_SUFFIX,
        directions=config.directions,
        load_if_exists=True,
        sampler=optuna.samplers.RandomSampler(seed=seed + 1000 * worker + 500_000),
        pruner=make_pruner(config, pruner),
    )


def spent(study: optuna.Study) -> int:
    """Proxy training a study has done, in replica-epochs: the epochs of every run of every trial
    that trained (repeats of an earlier spec trained nothing; rejected samples neither)."""
    total = 0
    for t in study.get_trials(deepcopy=False):
        record = read_trial(t)
        if is_live(t) and record.duplicate_of is None:
            total += sum(r.epochs for r in record.runs)
    return total


def control_top_up(control: optuna.Study, target: int, per_trial: int, max_trials: int) -> tuple[int, int, int]:
    """Queue a slot of the control when what it has spent plus what its running trials may spend
    (``per_trial`` replica-epochs each) stays below ``target``, and it holds fewer than
    ``max_trials`` (repeats of one spec spend nothing: a tiny space must still end); returns
    ``(spent, running, waiting)`` after queuing."""
    live = live_slots(control)
    running = sum(t.state == TrialState.RUNNING for t in live)
    waiting = sum(t.state == TrialState.WAITING for t in live)
    done = spent(control)
    if waiting == 0 and done + running * per_trial < target and len(live) < max_trials:
        control.enqueue_trial({}, user_attrs=slot_attrs())
        waiting = 1
    return done, running, waiting


def control_best(control: optuna.Study, config: StudyConfig) -> FrozenTrial | None:
    """The control's best candidate by the study's proxy score (ties: fewer FLOPs, earlier)."""
    pool = candidates(control)
    return min(
        pool, key=lambda t: (config.proxy.rank_key(t.values[0]), read_trial(t).flops or 0, t.number), default=None
    )
