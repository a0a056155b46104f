"""Shared fixtures: the reference files copied from the release, and small specs."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from xnetspace import NetworkSpec

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def parity():
    """The release's outputs for a small random network (see ARCHITECTURE.md, parity_small.pt)."""
    return torch.load(DATA / "parity_small.pt", weights_only=True)


def release_state_dict(variant: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors in the exact keys and shapes of the release's state dict for T/S/B."""
    shapes = json.loads((DATA / f"official_state_dict_shapes_{variant}.json").read_text())
    gen = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(s, generator=gen) if s else torch.tensor(0) for k, s in shapes.items()}
    for k in state:
        if k.endswith("running_var"):  # a variance must be positive, or BN gives NaN
            state[k] = state[k].abs() + 0.5
    return state


def tiny_spec(**overrides) -> NetworkSpec:
    """A four-stage network small enough to run in milliseconds."""
    stages = [
        dict(depth=1, embed_dim=16, num_heads=1, sr_ratio=4),
        dict(depth=1, embed_dim=32, num_heads=2, sr_ratio=2),
        dict(depth=2, embed_dim=48, num_heads=2, sr_ratio=2, idconv_groups=3, idconv_kernel_size=5),
        dict(depth=1, embed_dim=64, num_heads=4, sr_ratio=1, mlp_ratio=2),
    ]
    return NetworkSpec.model_validate({"name": "tiny", "stages": stages, "num_classes": 10, **overrides})


def random_specs(count: int, seed: int = 0) -> list[NetworkSpec]:
    """``count`` valid specs drawn at random over everything the spec allows (1-5 stages,
    attention shares 0..1 including both ends, G = 1.., every sr_ratio 1-8, odd kernels 1-9),
    kept small so that building and tracing them is fast. Invalid draws are redrawn."""
    rng = random.Random(seed)
    specs = []
    while len(specs) < count:
        stages = []
        for _ in range(rng.randint(1, 5)):
            heads = rng.choice([1, 2, 3, 4])
            ratios = [0.0, 0.25, 0.5, 0.75, 1.0, rng.random()]
            stages.append(dict(
                depth=rng.randint(1, 2),
                embed_dim=rng.choice([8, 12, 16, 24, 32, 40, 48]),
                num_heads=heads,
                sr_ratio=rng.randint(1, 8),
                idconv_groups=rng.randint(1, 4),
                idconv_kernel_size=rng.choice([1, 3, 5, 7, 9]),
                mlp_ratio=rng.choice([1, 1.5, 2, 3, 4]),
                ffn_kernel_sizes=sorted(rng.sample([1, 3, 5, 7, 9], rng.randint(1, 4))),
                attn_ratio=rng.choice(ratios),
            ))
        fields = dict(
            stages=stages,
            in_chans=rng.choice([1, 3]),
            num_classes=rng.choice([0, 7, 10]),
            image_size=rng.choice([32, 64, 96, 224]),
            layer_scale_init_value=rng.choice([1e-5, None]),
        )
        try:
            specs.append(NetworkSpec.model_validate(fields))
        except ValidationError:
            continue
    return specs
