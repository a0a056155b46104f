"""Files of ``xnetspace refine``: ``refine.json``, ``refined_space.yaml`` and ``refine_edf.png`` (one
panel per tested constraint: the EDF of the members it was tested within against the EDF of
those that satisfy it, plain and complexity-normalised; matplotlib, Agg)."""

from __future__ import annotations

import math
from pathlib import Path

from ..paths import output_folder
from .analysis_plots import axis_label
from .analysis_schema import Evidence, RefineResult
from .analysis_stats import complexity_weights, edf
from .refine import Refinement
from .refine_evidence import bins_for
from .space import space_yaml

__all__ = ["write_refine", "write_result", "MAX_PANELS", "REFINE_FILES"]

REFINE_FILES = ("refine.json", "refined_space.yaml", "refine_edf.png")

MAX_PANELS = 24  # panels of refine_edf.png: the greedy order first, then the other tested constraints


def write_refine(refinement: Refinement, out: Path) -> dict[str, Path]:
    """Write ``refine.json``, ``refined_space.yaml`` and ``refine_edf.png`` into ``out`` (created if
    missing; checked by :func:`xnetspace.paths.output_folder`, which raises PathError). Returns
    ``{"json": ..., "space": ..., "edf": ...}``."""
    out = output_folder(out, "--out", REFINE_FILES)
    result = refinement.result
    files = {"json": out / "refine.json", "space": out / result.refined_space_file, "edf": out / "refine_edf.png"}
    write_result(result, files["json"])
    header = [
        f"{result.refined_space}: refined by `xnetspace refine` from study {result.study} "
        f"({result.members} members, {result.score.label}).",
        f"Knobs: {len(result.knobs_before)} before, {len(result.knobs_after)} after. Accepted, in order:",
    ]
    header += [f"  {i}. {a}" for i, a in enumerate(result.accepted, start=1)] or ["  (none)"]
    header += ["Evidence for each step: refine.json beside this file; the rule: docs/design_spaces.md."]
    files["space"].write_text(space_yaml(refinement.space, "\n".join(header)))
    _plot(refinement, files["edf"])
    return files


def write_result(result: RefineResult, path: Path) -> None:
    """Write ``refine.json`` (:meth:`~.analysis_schema.RefineResult.json_text`) to ``path``."""
    path.write_text(result.json_text() + "\n")


def _plot(refinement: Refinement, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = refinement.result
    tested = [s for s in result.steps if s.first_test is not None]
    tested.sort(key=lambda s: (s.order is None, s.order or 0))
    panels: list[tuple[str, str, Evidence | None]] = [
        ("all accepted constraints", "all accepted constraints", result.final_test)
    ]
    panels += [(s.description, f"{s.kind} {s.knob}: {s.verdict}", s.test or s.first_test) for s in tested]
    panels = panels[:MAX_PANELS]
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_axis_off()
    digits = 4 if result.score.unit == "nats" else 2
    for ax, (key, title, test) in zip(axes.flat, panels):
        mask, within = refinement.masks.get(key), refinement.within.get(key)
        if mask is None or test is None or mask[within].sum() == 0:
            why = "no member satisfies it" if mask is not None and test is not None else "nothing to draw"
            ax.text(0.5, 0.5, f"{title}\n({why})", ha="center", va="center", fontsize=7)
            ax.set_axis_off()
            continue
        e, f, m = refinement.errors[within], refinement.flops[within], mask[within]
        ax.step(*edf(e), where="post", color="C0", label=f"members ({len(e)})")
        ax.step(*edf(e[m]), where="post", color="C1", label=f"satisfying ({int(m.sum())})")
        try:
            (ws, wm), _ = complexity_weights([f[m], f], bins=bins_for(int(m.sum())))
            ax.step(*edf(e, wm), where="post", color="C0", linestyle="--", alpha=0.6)
            ax.step(*edf(e[m], ws), where="post", color="C1", linestyle="--", alpha=0.6)
        except ValueError:
            pass  # no shared FLOP bin: the plain EDFs only
        ci = test.mean_difference_ci95
        extra = f"\ndiff {test.mean_difference:+.{digits}f} [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]" if ci else ""
        ax.set_title(_wrap(title, 44) + extra, fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    for ax in axes[-1]:
        if ax.axison:
            ax.set_xlabel(axis_label(result.score), fontsize=7)
    fig.suptitle(f"refine: EDFs of {result.study} (solid plain, dashed complexity-normalised)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])[:200]
