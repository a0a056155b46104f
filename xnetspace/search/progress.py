"""What a running study shows on the terminal: a progress bar over the N trials, read from the
storage so that it sees every worker's trials, and one line per finished trial."""
from __future__ import annotations

import contextlib
import threading

import optuna
from optuna.trial import FrozenTrial

from .space import human_count
from .study import RunOptions, is_live, slot_state

__all__ = ["Monitor", "log", "trial_line", "POLL_SECONDS"]

POLL_SECONDS = 3.0  # each poll reads every trial from the storage: at 1 s the head took ~20% of a core


def log(options: RunOptions, message: str) -> None:
    """Print a line above the progress bar (nothing when ``options.progress`` is off)."""
    if options.progress:
        from tqdm import tqdm

        tqdm.write(message)


class Monitor:
    """Progress bar over the study's N trials and one line per finished trial, read from the
    storage so that it sees every worker's trials."""

    def __init__(self, study: optuna.Study, options: RunOptions):
        from tqdm import tqdm

        self.study, self.options = study, options
        self.seen: set[int] = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        self.bar = tqdm(total=options.n_trials, desc="trials", unit="trial", disable=not options.progress,
                        initial=slot_state(study, options.n_trials).done, dynamic_ncols=True, mininterval=0)

    def poll(self) -> None:
        for trial in self.study.get_trials(deepcopy=False):
            if trial.state.is_finished() and trial.number not in self.seen:
                self.seen.add(trial.number)
                if is_live(trial):
                    self.bar.write(trial_line(trial))
        done = slot_state(self.study, self.options.n_trials).done
        if done != self.bar.n:  # redraw only on progress: logs get one bar line per trial
            self.bar.update(done - self.bar.n)

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


def trial_line(trial: FrozenTrial) -> str:
    """``trial 12  COMPLETE  14.2M FLOPs  0.31M params  top-1 97.50  loss 0.1234  12.3 s  (3 rejected)``
    (the last epoch's validation top-1 and cross-entropy)."""
    a = trial.user_attrs
    top1 = f"top-1 {a['top1_history'][-1]:6.2f}" if a.get("top1_history") else "top-1    -  "
    parts = [f"trial {trial.number:4d}", f"{trial.state.name:8s}", f"{human_count(a.get('flops', 0)):>7s} FLOPs",
             f"{human_count(a.get('params', 0)):>7s} params", top1]
    if a.get("loss_history"):
        parts.append(f"loss {a['loss_history'][-1]:.4f}")
    parts.append(f"{a.get('seconds', 0):6.1f} s")
    if a.get("rejected_samples"):
        parts.append(f"({a['rejected_samples']} rejected before)")
    if "duplicate_of" in a:
        parts.append(f"(same spec as trial {a['duplicate_of']})")
    if a.get("reason"):
        parts.append(f"[{a['reason']}]")
    return "  ".join(parts)
