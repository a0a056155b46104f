"""What a running study shows on the terminal, read from the storage so that it sees every
worker's work: a progress bar over the N trials with one line per finished trial, then a bar over
the confirmation runs with one line per confirmed spec, and a line whenever a worker is lost."""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import cast

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from .confirmation import control_finished
from .control import spent
from .records import counts_as_job, is_live, read_job, read_trial
from .score import Metric
from .space import human_count
from .study import slot_state

__all__ = ["Monitor", "JobMonitor", "remaining_seconds", "log", "trial_line", "POLL_SECONDS"]

POLL_SECONDS = 3.0  # each poll reads every trial from the storage: at 1 s the head took ~20% of a core


def log(show: bool, message: str) -> None:
    """Print a line above the progress bar (nothing when ``show``, the run's ``progress``, is off)."""
    if show:
        from tqdm import tqdm

        tqdm.write(message)


class Monitor:
    """Progress of a study as its storage shows it, phase by phase, each with its bar (rate and
    ETA) and a line per finished item: the search's N trials; the random-search control's trials
    (``control``, :mod:`.control`; its bar counts replica-epochs up to the search's); the
    confirmation's jobs (the total grows as jobs that wait on others are planned), a line per
    confirmed spec (by ``score``). Items finished before this run started are not announced again.
    ``show``: print anything at all (the run's ``progress``)."""

    def __init__(
        self,
        study: optuna.Study,
        cstudy: optuna.Study,
        n_trials: int,
        score: Metric,
        show: bool = True,
        control: optuna.Study | None = None,
    ):
        self.study, self.cstudy, self.control = study, cstudy, control
        self.n_trials, self.score, self.show = n_trials, score, show
        self.phase = "trials"
        self.seen: set[tuple[str, int]] = {
            (s.study_name, t.number)
            for s in (study, control)
            if s is not None
            for t in s.get_trials(deepcopy=False)
            if t.state.is_finished()
        }
        self.confirmed: set[str] = {
            label for label, jobs in _job_groups(self.cstudy).items() if all(t.state.is_finished() for t in jobs)
        }
        self.bar = self._bar(n_trials, "trials", "trial", slot_state(study, n_trials).done)

    def _bar(self, total: int, desc: str, unit: str, initial: int):
        from tqdm import tqdm

        return tqdm(
            total=total,
            desc=desc,
            unit=unit,
            disable=not self.show,
            initial=initial,
            dynamic_ncols=True,
            mininterval=0,
        )

    def _next_bar(self, total: int, desc: str, unit: str, initial: int) -> None:
        self.bar.close()
        self.bar = self._bar(total, desc, unit, initial)

    def _advance(self, done: int, total: int | None = None) -> None:
        if total is not None and total != self.bar.total:
            self.bar.total = total
            self.bar.refresh()
        if done != self.bar.n:  # redraw only on progress: logs get one bar line per item
            self.bar.update(done - self.bar.n)

    def log(self, message: str) -> None:
        """A line above the bar (nothing when progress output is off)."""
        if self.show:
            self.bar.write(message)

    def poll(self) -> None:
        if self.phase == "trials" and self._poll_trials(self.study, self.n_trials):
            self.phase = "control" if self.control is not None else "confirmation"
            if self.control is not None:
                self._next_bar(spent(self.study), "random control", "epoch", spent(self.control))
        if self.phase == "control":
            assert self.control is not None  # the phase only comes with a control study
            self._poll_trials(self.control, None, prefix="random ")
            self._advance(min(spent(self.control), self.bar.total))
            if control_finished(self.control, self.study):
                self.phase = "confirmation"
        if self.phase in ("confirmation", "confirming"):
            self._poll_confirmation()

    def _poll_trials(self, study: optuna.Study, n_trials: int | None, prefix: str = "") -> bool:
        """Announce finished trials; with ``n_trials``, advance the bar; True when N are done."""
        live = []
        for trial in study.get_trials(deepcopy=False):
            if is_live(trial):
                live.append(trial)
                if trial.state.is_finished() and (study.study_name, trial.number) not in self.seen:
                    self.seen.add((study.study_name, trial.number))
                    self.log(prefix + trial_line(trial))
        if n_trials is None:
            return False
        done = sum(t.state.is_finished() for t in live[:n_trials])
        self._advance(done)
        return done >= n_trials

    def _poll_confirmation(self) -> None:
        groups = _job_groups(self.cstudy)
        total = sum(len(jobs) for jobs in groups.values())
        done = sum(t.state.is_finished() for jobs in groups.values() for t in jobs)
        if not total:
            return
        if self.phase != "confirming":
            self.phase = "confirming"
            self._next_bar(total, "confirmation", "job", done)
        self._advance(done, total)
        for label, jobs in groups.items():
            if label not in self.confirmed and all(t.state.is_finished() for t in jobs):
                self.confirmed.add(label)
                self.log(confirmed_line(label, jobs, self.score))

    @contextlib.contextmanager
    def running(self):
        """Poll in a background thread while the block (an in-process worker) runs."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(POLL_SECONDS):
                self.poll()

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.poll()

    def close(self) -> None:
        self.bar.close()


def _job_groups(cstudy: optuna.Study) -> dict[str, list[FrozenTrial]]:
    """The confirmation study's counted jobs (:func:`~.records.counts_as_job`), grouped by what they
    confirm: ``"candidate trial 12"``, ``"random tiny_cpu_random3 (proxy)"``."""
    groups: dict[str, list[FrozenTrial]] = {}
    for t in cstudy.get_trials(deepcopy=False):
        if counts_as_job(t):
            job = cast(dict, read_job(t).job)  # a counted job's record holds it
            label = f"{job['role']} {job['label']}" + (" (proxy)" if job.get("proxy") else "")
            groups.setdefault(label, []).append(t)
    return groups


def confirmed_line(label: str, jobs: list[FrozenTrial], score: Metric) -> str:
    """``confirmed candidate trial 12: cross-entropy 0.1968 +- 0.0069 (3 seeds)``."""
    values = [score.of_run(r) for t in jobs if t.state == TrialState.COMPLETE for r in read_job(t).runs]
    failed = [read_job(t).reason for t in jobs if t.state != TrialState.COMPLETE]
    if not values:
        text = "no run finished"
    elif len(values) == 1:
        text = f"{score.label} {score.format(values[0])} (1 seed)"
    else:
        text = (
            f"{score.label} {score.format(statistics.mean(values))} +- "
            f"{score.format(statistics.stdev(values))} ({len(values)} seeds)"
        )
    return f"confirmed {label}: {text}" + (f"; failed: {failed[0]}" if failed else "")


def trial_line(trial: FrozenTrial) -> str:
    """``trial 12  COMPLETE  14.2M FLOPs  0.31M params  top-1 97.50  loss 0.1234  12.3 s  (3 rejected)``
    (the last epoch's validation top-1 and cross-entropy, averaged over the trial's seeds)."""
    r = read_trial(trial)
    top1, loss = r.final("top1"), r.final("loss")
    parts = [
        f"trial {trial.number:4d}",
        f"{trial.state.name:8s}",
        f"{human_count(r.flops or 0):>7s} FLOPs",
        f"{human_count(r.params or 0):>7s} params",
        f"top-1 {top1:6.2f}" if top1 is not None else "top-1    -  ",
    ]
    if loss is not None:
        parts.append(f"loss {loss:.4f}")
    parts.append(f"{r.seconds or 0:6.1f} s")
    if r.rejected_samples:
        parts.append(f"({r.rejected_samples} rejected before)")
    if r.duplicate_of is not None:
        parts.append(f"(same spec as trial {r.duplicate_of})")
    if r.reason:
        parts.append(f"[{r.reason}]")
    return "  ".join(parts)


class JobMonitor:
    """A bar over a study of jobs (:mod:`.jobs`; every worker's, read from the storage) whose time
    estimate is fitted to the jobs that finished, not to their count: jobs of one study can differ
    tenfold in cost (a table's specs span its FLOP budget). ``sizes`` gives each job's size by its
    key (FLOPs x seeds x epochs, say): the seconds of the jobs finished in this run are fitted as
    ``a + b * size`` (:func:`remaining_seconds`), and the bar shows the wall time the waiting and
    running jobs will take over ``workers`` workers (``ETA ?`` until a job has finished)."""

    def __init__(
        self,
        study: optuna.Study,
        sizes: dict[str, float],
        workers: int,
        desc: str,
        progress: bool,
        on_poll: Callable[[], None] | None = None,
    ):
        from tqdm import tqdm

        self.study, self.sizes, self.workers, self.on_poll = study, sizes, max(1, workers), on_poll
        jobs = study_jobs(study)
        self.before = {t.number for t in jobs if t.state.is_finished()}  # finished before this run: left out of the fit
        self.bar = tqdm(
            total=len(sizes),
            desc=desc,
            unit="job",
            disable=not progress,
            initial=len(self.before),
            dynamic_ncols=True,
            mininterval=0,
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} jobs [{elapsed}{postfix}]",
        )

    def poll(self) -> None:
        done, running, waiting = [], [], []
        now, jobs = time.time(), study_jobs(self.study)
        for t in jobs:
            size = self.sizes.get(cast(str, read_job(t).key), 0.0)
            if t.state == TrialState.COMPLETE and t.number not in self.before and read_job(t).seconds:
                done.append((size, cast(float, read_job(t).seconds)))
            elif t.state == TrialState.RUNNING:
                started = t.datetime_start.timestamp() if t.datetime_start else now
                running.append((size, now - started))
            elif t.state == TrialState.WAITING:
                waiting.append(size)
        finished = sum(t.state.is_finished() for t in jobs)
        eta = remaining_seconds(done, waiting, running, self.workers)
        self.bar.set_postfix_str(f"ETA {_clock(eta)}" if eta is not None else "ETA ?", refresh=False)
        self.bar.update(finished - self.bar.n)
        if self.on_poll is not None:
            self.on_poll()

    def log(self, line: str) -> None:
        self.bar.write(line)

    def close(self) -> None:
        self.bar.close()


def study_jobs(study: optuna.Study) -> list[FrozenTrial]:
    """The study's counted jobs (:func:`~.records.counts_as_job`)."""
    return [t for t in study.get_trials(deepcopy=False) if counts_as_job(t)]


def remaining_seconds(
    done: Sequence[tuple[float, float]],
    waiting: Sequence[float],
    running: Sequence[tuple[float, float]],
    workers: int,
) -> float | None:
    """Wall seconds left: ``done`` holds (size, seconds) of finished jobs, ``waiting`` the sizes of
    queued ones, ``running`` (size, seconds so far) of the running ones. Seconds are fitted as
    ``a + b * size`` with a, b >= 0 (``scipy.optimize.nnls``; with one size seen, seconds
    proportional to size); the work left, over ``workers``, but never less than the longest single
    job left. None before any job finished."""
    from scipy.optimize import nnls

    if not done:
        return None
    sizes, seconds = np.array([d[0] for d in done], float), np.array([d[1] for d in done], float)
    if np.ptp(sizes) > 0:
        (a, b), _ = nnls(np.column_stack([np.ones_like(sizes), sizes]), seconds)
    else:
        a, b = (0.0, seconds.mean() / sizes.mean()) if sizes.mean() > 0 else (seconds.mean(), 0.0)
    left = [a + b * s for s in waiting] + [max(0.0, a + b * s - spent) for s, spent in running]
    return max(sum(left) / max(1, workers), max(left, default=0.0))


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
