"""Budget scaling: a preset shrunk (or grown) to a FLOP budget by one rule, for fair baselines.

A searched network is only better than a paper preset if it wins *at the same budget*. The rule
(compound scaling with one factor ``s`` for every stage, in the spirit of EfficientNet's depth
and width multipliers, Tan & Le 2019, with alpha = beta):

- ``depth``: ``max(1, round(depth * s))``;
- ``embed_dim``: the valid width nearest to ``embed_dim * s`` (valid: the stage's
  ``attn_ratio`` and ``mlp_ratio`` give whole channel counts, the heads divide the attention
  channels, IDConv gets 0 or >= 4 channels; ties go to the smaller width);
- ``num_heads``: ``max(1, round(num_heads * s))``, lowered only when no width within 10% of the
  target is valid with it;
- every other field (``sr_ratio``, ``attn_ratio``, kernels, ``mlp_ratio``, ``idconv_groups``)
  as in the preset.

``s`` (0.05 to 4) is found by bisection for the largest factor within the budget, then a scan
of the factors just below it (step 0.002, rounding makes FLOPs slightly non-monotone in ``s``)
keeps the scaled spec with the most FLOPs that does not pass the budget's maximum (nor
``max_params``, nor fall below the minimum); FLOPs and params come from the exact cost model,
nothing is built.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from .cost import ImageSize, count_flops, count_params, parse_image_size
from .spec import NetworkSpec, SpecError, StageSpec

__all__ = ["scale_spec", "scale_to_budget", "ScalingError"]

_LOW, _HIGH, _STEP = 0.05, 4.0, 0.002


class ScalingError(SpecError):
    """No scaled version of the spec meets the budget; the message gives the closest ones."""


def _scaled_stage(stage: StageSpec, s: float) -> StageSpec:
    target = stage.embed_dim * s
    base = stage.model_dump()
    widths = sorted(range(1, max(8, round(2 * target)) + 1), key=lambda w: (abs(w - target), w))
    near = [w for w in widths if abs(w - target) <= max(4.0, 0.1 * target)]
    # Keep the scaled head count where a width near the target allows it; fewer heads only if not.
    for h in range(max(1, round(stage.num_heads * s)), 0, -1):
        for width in near if h > 1 else widths:
            try:
                return StageSpec.model_validate(
                    {**base, "depth": max(1, round(stage.depth * s)), "embed_dim": width, "num_heads": h}
                )
            except ValidationError:
                continue
    raise ScalingError(f"no valid width near {target:.1f} for stage {stage}")


def scale_spec(spec: NetworkSpec, s: float) -> NetworkSpec:
    """``spec`` with every stage's depth, width and heads scaled by ``s`` (see the module rule).

    Raises:
        ScalingError: ``s`` not positive.
    """
    if not s > 0:
        raise ScalingError(f"scale factor must be positive, got {s}")
    stages = [_scaled_stage(stage, s) for stage in spec.stages]
    return NetworkSpec.model_validate({**spec.model_dump(), "stages": [st.model_dump() for st in stages]})


def scale_to_budget(
    spec: NetworkSpec,
    max_flops: int,
    image_size: ImageSize = 224,
    *,
    min_flops: int | None = None,
    max_params: int | None = None,
    network: dict[str, Any] | None = None,
) -> NetworkSpec:
    """The largest scaled version of ``spec`` within a FLOP budget (FLOPs at ``image_size``,
    counted as fvcore does: one multiply-add = one flop).

    Args:
        image_size: the input size the FLOPs are counted at (int or (H, W)).
        network: network fields to set before scaling (``num_classes``, ``in_chans``, the
            position biases' ``image_size``, ...), so that the baseline is counted as the
            candidates are.

    Raises:
        ScalingError: no factor gives a spec with ``min_flops <= FLOPs <= max_flops`` and at most
            ``max_params`` params (the message gives the nearest FLOPs below and above).
    """
    size = parse_image_size(image_size)
    base = NetworkSpec.model_validate({**spec.model_dump(), **network}) if network else spec

    def fits_max(s: float) -> tuple[int, NetworkSpec] | None:
        scaled = scale_spec(base, s)
        flops = count_flops(scaled, size)
        if flops > max_flops or (max_params is not None and count_params(scaled) > max_params):
            return None
        return flops, scaled

    lo: float | None  # None: not even the smallest factor fits
    lo, hi = _LOW, _HIGH  # invariant (up to rounding): lo fits, hi does not
    if fits_max(lo) is None:
        lo = None
    elif fits_max(hi) is not None:
        lo = hi
    else:
        while hi - lo > _STEP:
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if fits_max(mid) is not None else (lo, mid)
    best = None
    if lo is not None:
        for i in range(25):  # the factors just below the bisection's answer
            found = fits_max(max(_LOW, lo - i * _STEP))
            if found is not None and (best is None or found[0] > best[0]):
                best = (*found, round(max(_LOW, lo - i * _STEP), 3))
    if best is None or (min_flops is not None and best[0] < min_flops):
        budget = f"{min_flops or 0:,}-{max_flops:,} FLOPs at {size[0]}x{size[1]}"
        budget += f", at most {max_params:,} params" if max_params is not None else ""
        hint = f"; the largest scaled version within the maximum has {best[0]:,} FLOPs" if best else ""
        raise ScalingError(
            f"no scaled {base.name} (depth, width and heads x {_LOW}..{_HIGH}) fits the budget {budget}{hint}"
        )
    _, scaled, s = best
    return NetworkSpec.model_validate({**scaled.model_dump(), "name": f"{base.name}_x{s:g}"})
