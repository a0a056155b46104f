"""Refining a design space from one population study: pycls's AnyNet-to-RegNet step
(Radosavovic et al. 2020, "Designing Network Design Spaces", section 3).

A population study (``xnetspace search --population``: random sampler, no pruner) is a uniform
sample of its space with each member's error in the study's score (cross-entropy in nats in a
``loss`` study, top-1 error in percent otherwise; lower is better). Each *candidate constraint*
(:mod:`.refine_constraints`: ties, monotone knobs, the attention-share schedule, RegNet's width
rule, fixes of knobs of nil importance) picks the members that satisfy it; the evidence and the
acceptance rule (:mod:`.refine_evidence`) say whether the satisfying subset is detectably worse.

:func:`refine` tests the candidates on all members first; those not rejected are then accepted in
order of evidence (the upper end of the CI of the mean difference, lowest first). The constraints
on the space's shape (tie, monotone, schedule, width rule) come first, each re-tested on the
members that satisfy the shape accepted before it; the fixes after them, each decided on all
members (in a uniform sample the members with one knob at one value are a uniform sample of the
others; nested fixes would leave a third of the members per knob). A constraint is not applicable
when it cannot be written into the space together with the accepted ones, or when the space would
then hold fewer than ``MIN_MODELS`` distinct in-budget models (too few for a fresh population to
verify it). The result is a :class:`~.analysis_schema.RefineResult` (``refine.json``; in words:
:mod:`.refine_report`; its files: :mod:`.refine_plots`).

Caveats: dozens of tests at 95% each; ``fix`` and ``width_rule`` pick their values from the
same errors they are then tested on (the subset looks better than it is); the fixes' joint
effect is not tested. ``--verify N`` answers all three: a fresh population of the refined space,
compared with the original (:func:`~.analysis.analyze`; :mod:`.refine_verify`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from ..spec import NetworkSpec
from .analysis import UNBIASED_SAMPLERS, AnalysisError, Candidate, StudyData
from .analysis_schema import Evidence, RefineKind, RefineResult, RefineStep, Verdict
from .refine_constraints import Constraint, Member, candidate_constraints
from .refine_evidence import MIN_SUBSET, evidence, verdict
from .space import SearchSpace, SpaceError, space_data

__all__ = ["refine", "Refinement", "MIN_MEMBERS", "MIN_MODELS", "CHECK_DRAWS", "SHAPE_KINDS"]

MIN_MEMBERS = 2 * MIN_SUBSET  # a population smaller than this is refused
SHAPE_KINDS = {RefineKind.TIE, RefineKind.MONOTONE, RefineKind.SCHEDULE, RefineKind.WIDTH_RULE}  # not fixes
MIN_MODELS = 100  # distinct in-budget models a refined space keeps: a fresh population (pycls: 100) to verify it
CHECK_DRAWS = 5000  # random draws in which they must be found

_RULE = (
    f"accept a constraint when at least {MIN_SUBSET} members satisfy it and the 95% bootstrap CI of "
    f"mean(satisfying) - mean(members), complexity-normalised, does not lie above 0 (not detectably worse); "
    f"reject when it lies above 0; undecided with fewer members. Tested on all members, then accepted greedily "
    f"by the upper end of that CI (lowest first), each re-tested on the members that satisfy every constraint "
    f"accepted before it."
)

Test = Callable[[np.ndarray, np.ndarray, np.ndarray], Evidence]  # evidence() with the seed and resamples bound


@dataclass
class Refinement:
    """What :func:`refine` found: the result (``refine.json``), the refined space, and the
    data the figures need."""

    result: RefineResult
    space: SearchSpace
    errors: np.ndarray
    flops: np.ndarray
    masks: dict[str, np.ndarray]  # step description -> satisfied; plus "subset before" masks
    within: dict[str, np.ndarray]


def refine(data: StudyData, force: bool = False, seed: int = 0, n_resamples: int = 1999) -> Refinement:
    """Test candidate constraints on a population study and build the refined space.

    Args:
        data: the population study (:func:`~.analysis.study_data`); members are its candidates
            with a stored spec.
        force: refine a study that is not a population study (another sampler, a pruner).

    Returns:
        A :class:`Refinement`: ``result`` is ``refine.json``
        (:class:`~.analysis_schema.RefineResult`), ``space`` the refined space.

    Raises:
        AnalysisError: a study that is not a population study (without ``force``), or with fewer
            than ``MIN_MEMBERS`` members.
    """
    if not force:
        _check_population(data)
    candidates, members = _members(data)
    space = data.config.space
    errors = np.array([m.error for m in members])
    flops = np.array([m.flops for m in members], float)
    constraints, importance = candidate_constraints(space, members, candidates, data.distributions, seed)
    test: Test = functools.partial(evidence, seed=seed, n_resamples=n_resamples)
    steps, masks, within = _first_tests(constraints, space, errors, flops, test)
    refined_data, current, accepted = _accept_greedily(constraints, steps, space, errors, flops, within, test, seed)
    refined = _refined_space(refined_data, data, len(members), len(accepted))
    result = RefineResult(
        study=data.name,
        source=data.source,
        space=space.name,
        refined_space=refined.name,
        refined_space_file="refined_space.yaml",
        score=data.score.model_copy(),
        members=len(members),
        rule=_RULE,
        knobs_before=space.param_names(),
        knobs_after=refined.param_names(),
        steps=steps,
        accepted=accepted,
        members_left=int(current.sum()),
        final_test=test(errors, flops, current) if accepted else None,
        importance=importance,
        warnings=_refine_warnings(data, steps, len(members)),
    )
    masks["all accepted constraints"], within["all accepted constraints"] = current, np.ones(len(members), bool)
    return Refinement(result, refined, errors, flops, masks, within)


def _check_population(data: StudyData) -> None:
    """Refuse a study that is not a population study (a biased sampler, a pruner)."""
    sampler, pruner = data.settings.get("sampler", "unknown"), data.settings.get("pruner", "unknown")
    if sampler not in UNBIASED_SAMPLERS or pruner != "none" or data.pruned_by_pruner:
        raise AnalysisError(
            f"study {data.name!r} is not a population study (sampler {sampler}, pruner {pruner}): "
            f"its members are not a uniform sample of the space, so subsets of them say little "
            f"about subspaces; run xnetspace search --population, or pass --force"
        )


def _members(data: StudyData) -> tuple[list[Candidate], list[Member]]:
    """The study's candidates with a stored spec, and the members made of them (AnalysisError when
    there are fewer than ``MIN_MEMBERS``)."""
    candidates = [c for c in data.candidates if c.spec is not None]
    members = [Member(c.number, c.error, c.flops, NetworkSpec.model_validate(c.spec), c.knobs) for c in candidates]
    if len(members) < MIN_MEMBERS:
        raise AnalysisError(
            f"study {data.name!r} has {len(members)} members with a stored spec; refine needs at "
            f"least {MIN_MEMBERS} (each constraint needs {MIN_SUBSET} members that satisfy it; pycls "
            f"sampled 100 or more per space)"
        )
    return candidates, members


def _first_tests(
    constraints: list[Constraint],
    space: SearchSpace,
    errors: np.ndarray,
    flops: np.ndarray,
    test: Test,
) -> tuple[list[RefineStep], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Each constraint written into the original space alone and, where it can be, tested on all
    members: refine.json's steps, and per tested constraint its mask and the members tested within."""
    everyone = np.ones(len(errors), bool)
    steps: list[RefineStep] = []
    masks, within = {}, {}
    for c in constraints:
        if c.not_applicable is None:
            _check_alone(c, space)
        step = _new_step(c)
        if c.not_applicable is None:
            step.first_test = test(errors, flops, c.satisfied)
            step.verdict, step.reason = verdict(step.first_test)
            masks[c.description] = c.satisfied
            within[c.description] = everyone
        steps.append(step)
    return steps, masks, within


def _check_alone(c: Constraint, space: SearchSpace) -> None:
    """Mark ``c`` not applicable when, written into the original space alone, it gives no valid space."""
    try:
        alone = _fresh(space)
        c.apply(alone)
        SearchSpace.model_validate(alone)
    except (ValueError, ValidationError) as err:
        c.not_applicable = f"cannot be written into the space: {_first_line(err)}"


def _new_step(c: Constraint) -> RefineStep:
    """Constraint ``c``'s step of refine.json, untested."""
    return RefineStep(
        kind=c.kind,
        knob=c.knob,
        description=c.description,
        order=None,
        first_test=None,
        test=None,
        verdict=Verdict.NOT_APPLICABLE,
        reason=c.not_applicable or "",
        details=c.details,
    )


def _ranked(steps: list[RefineStep]) -> list[int]:
    """The constraints accepted on all members, in the order they are combined."""
    # greedy: strongest evidence first; the space's shape (tie, monotone, schedule, width rule)
    # first, each re-tested within the members left by the shape accepted before it; then the
    # fixes, each decided on all members, not within the shrinking subsets: in a uniform sample
    # the members with one knob at one value are a uniform sample of the other knobs (the shape
    # included), and nested subsets leave too few members to decide anything (a third per knob,
    # and a monotone chain of widths keeps 15 of 100). The fixes' joint effect, with the shape,
    # is what --verify measures on a fresh population.
    return _by_evidence(steps, SHAPE_KINDS) + _by_evidence(steps, {RefineKind.FIX})


def _by_evidence(steps: list[RefineStep], kinds: set[RefineKind]) -> list[int]:
    """The accepted constraints of ``kinds``: the lowest upper end of the CI first, then the most
    members, then the first candidate."""
    ranked = []
    for i, s in enumerate(steps):
        test = s.first_test  # an accepted step was tested and has a CI
        if s.verdict == Verdict.ACCEPTED and s.kind in kinds and test and test.mean_difference_ci95:
            ranked.append((test.mean_difference_ci95[1], -test.satisfying, i))
    return [i for *_, i in sorted(ranked)]


def _accept_greedily(
    constraints: list[Constraint],
    steps: list[RefineStep],
    space: SearchSpace,
    errors: np.ndarray,
    flops: np.ndarray,
    within: dict[str, np.ndarray],
    test: Test,
    seed: int,
) -> tuple[dict, np.ndarray, list[str]]:
    """Combine the constraints accepted on all members, in :func:`_ranked` order, each re-tested
    (a shape within the members satisfying the shape accepted before it; a fix on all members).

    Returns:
        the refined space's data, which members satisfy every accepted constraint, and the
        accepted constraints' descriptions; ``steps`` and ``within`` are updated in place.
    """
    everyone = np.ones(len(errors), bool)
    current, refined_data, accepted = everyone.copy(), _fresh(space), []
    for order, i in enumerate(_ranked(steps), start=1):
        c, step = constraints[i], steps[i]
        step.order = order
        trial_data = _copy(refined_data)
        try:
            _write_with_enough_models(c, trial_data, seed)
        except (ValueError, ValidationError, SpaceError) as err:
            step.verdict = Verdict.NOT_APPLICABLE
            step.reason = f"cannot be combined with the constraints accepted before it: {_first_line(err)}"
            continue
        tested_in = everyone if c.kind == RefineKind.FIX else current
        step.test = test(errors[tested_in], flops[tested_in], c.satisfied[tested_in])
        step.verdict, step.reason = verdict(step.test)
        within[c.description] = tested_in.copy()
        if step.verdict == Verdict.ACCEPTED:
            refined_data, current = trial_data, current & c.satisfied
            accepted.append(c.description)
        elif step.verdict == Verdict.UNDECIDED:
            step.reason += " (after the constraints accepted before it)"
    return refined_data, current, accepted


def _write_with_enough_models(c: Constraint, data: dict, seed: int) -> None:
    """Write ``c`` into the space data; SpaceError when the space then holds fewer than
    ``MIN_MODELS`` distinct in-budget models (ValueError, ValidationError: it cannot be written)."""
    c.apply(data)
    models = SearchSpace.model_validate(data).distinct_specs(MIN_MODELS, seed, "check", CHECK_DRAWS)
    if len(models) < MIN_MODELS:
        raise SpaceError(
            f"it leaves fewer than {MIN_MODELS} distinct in-budget models ({len(models)} in "
            f"{CHECK_DRAWS} draws): too few for a fresh population to verify the space"
        )


def _refined_space(refined_data: dict, data: StudyData, members: int, accepted: int) -> SearchSpace:
    """The refined space: named after the original, trained with the population's recipe."""
    space = data.config.space
    refined_data["name"] = _refined_name(space.name)
    refined_data["description"] = (
        f"{space.name} refined by xnetspace refine from study {data.name} "
        f"({members} members): {accepted} constraint(s) accepted"
    )
    refined_data["train"] = data.config.train.model_dump(mode="json")  # the recipe the population was trained with
    try:
        return SearchSpace.model_validate(refined_data)
    except ValidationError as err:  # every step was validated: a bug if it happens
        raise SpaceError(f"the refined space is not valid: {_first_line(err)}") from err


def _refine_warnings(data: StudyData, steps: list[RefineStep], members: int) -> list[str]:
    """refine.json's notes: the many tests, the values picked from the errors they are tested on,
    a small population, a forced study."""
    sampler, pruner = data.settings.get("sampler", "unknown"), data.settings.get("pruner", "unknown")
    warnings_ = [
        f"{sum(s.first_test is not None for s in steps)} constraints were tested at 95% each: some "
        f"verdicts are chance; --verify N samples a fresh population of the refined space and compares it "
        f"with this one",
        "fix and width_rule take their values from the errors they are then tested on (their subsets look "
        "better than they are), and each fix is decided alone, not with the others; --verify is the unbiased "
        "check",
    ]
    if members < 100:
        warnings_.append(
            f"{members} members: pycls sampled 100 or more per space; subsets are small and the "
            f"shape's greedy steps shrink them fast"
        )
    if sampler not in UNBIASED_SAMPLERS or pruner != "none":
        warnings_.append(
            f"refined with --force from a study with sampler {sampler}, pruner {pruner}: not a uniform sample"
        )
    return warnings_


def _refined_name(name: str) -> str:
    """``tiny_cpu`` -> ``tiny_cpu_refined`` -> ``tiny_cpu_refined2`` -> ``tiny_cpu_refined3``."""
    match = re.fullmatch(r"(.*)_refined(\d*)", name)
    if match is None:
        return f"{name}_refined"
    return f"{match[1]}_refined{int(match[2] or 1) + 1}"


def _fresh(space: SearchSpace) -> dict:
    return _copy(space_data(space))


def _copy(data: Any) -> Any:
    """A deep copy of plain data (dicts, lists, scalars)."""
    if isinstance(data, dict):
        return {k: _copy(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_copy(v) for v in data]
    return data


def _first_line(err: Exception) -> str:
    if isinstance(err, ValidationError):
        e = err.errors()[0]
        where = ".".join(map(str, e["loc"]))
        return f"{where + ': ' if where else ''}{e['msg'].removeprefix('Value error, ')}"
    return str(err).splitlines()[0]
