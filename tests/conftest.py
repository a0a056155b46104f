"""Shared fixtures: the reference files copied from the release, and small specs."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from xnetspace import NetworkSpec

DATA = Path(__file__).parent / "data"


PG_BIN = Path(os.environ.get("XNETSPACE_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_PASSWORD = "xnet-test-pw"


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL 15 server for the session: ``postgresql+psycopg://`` URL prefix
    (user ``xnet`` with password :data:`PG_PASSWORD` over TCP on 127.0.0.1; the unix socket is
    trust-only for setting it up). PostgreSQL refuses to run as root, so as root it runs as the
    ``postgres`` user. Skips with the reason when no server can be started (fails under CI=true,
    where .ci/run provides one); stopped at session end."""
    skip = pytest.fail if os.environ.get("CI") == "true" else pytest.skip
    try:
        import psycopg  # noqa: F401 - the driver the storage URLs name
    except ImportError:
        skip("psycopg is not installed (pip install -e '.[postgres]')")
    if not (PG_BIN / "initdb").is_file():
        skip(f"no PostgreSQL binaries in {PG_BIN} (set XNETSPACE_PG_BIN)")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="xnetspace-pg-"))
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            skip("running as root and runuser is missing: cannot start PostgreSQL as another user")
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    data, sockets = root / "data", root / "sock"

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)

    with socket.socket() as s:  # a free port; the small race with other programs is acceptable in tests
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    steps = [
        (str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"),
        ("mkdir", "-p", str(sockets)),
    ]
    for step in steps:
        done = run(*step)
        if done.returncode:
            shutil.rmtree(root, ignore_errors=True)
            skip(f"cannot start PostgreSQL: {' '.join(step[:1])} failed: {done.stderr.strip()[-500:]}")
    # Passwords over TCP (so a wrong one is refused); the unix socket trusts, for setting up only.
    (data / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    started = run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", options, "-w", "start")
    if started.returncode:
        log = (root / "log").read_text()[-500:] if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        skip(f"cannot start PostgreSQL: {started.stderr.strip()[-300:]} {log}")
    psql = [str(PG_BIN / "psql"), "-h", str(sockets), "-p", str(port), "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-q"]
    created = run(*psql, "-c", f"CREATE ROLE xnet LOGIN CREATEDB PASSWORD '{PG_PASSWORD}'")
    try:
        assert created.returncode == 0, created.stderr
        yield {
            "url": f"postgresql+psycopg://xnet:{PG_PASSWORD}@127.0.0.1:{port}",
            "port": port,
            "psql": [*as_user, *psql],
        }
    finally:
        run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def new_database(server: dict, name: str) -> str:
    """Create an empty database ``name`` on ``server`` (dropping one of that name); its storage URL."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in name.lower())[:50]
    done = subprocess.run(
        [*server["psql"], "-c", f"DROP DATABASE IF EXISTS {name}", "-c", f"CREATE DATABASE {name} OWNER xnet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return f"{server['url']}/{name}"


@pytest.fixture
def postgres_url(postgres_server, request):
    """A fresh, empty database on the session's server for one test; its storage URL."""
    return new_database(postgres_server, request.node.name)


@pytest.fixture(scope="session", autouse=True)
def prepared_cache(tmp_path_factory):
    """Image folders that tests prepare are cached in a session folder, never in ~/.cache
    (xnetspace/search/prepare.py; subprocesses inherit the variable). Tests of the cache itself
    point it at their own tmp_path."""
    folder = tmp_path_factory.mktemp("xnetspace-cache")
    before = os.environ.get("XNETSPACE_CACHE")
    os.environ["XNETSPACE_CACHE"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("XNETSPACE_CACHE", None)
    else:
        os.environ["XNETSPACE_CACHE"] = before


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
    attention shares 0..1 including both ends, G = 1.., every sr_ratio 1-8, odd kernels 1-9, STE's
    kernel 1-5),
    kept small so that building and tracing them is fast. Invalid draws are redrawn."""
    rng = random.Random(seed)
    later = random.Random(seed + 1)  # knobs added later draw from their own stream: the old draws stay
    specs = []
    while len(specs) < count:
        stages = []
        for _ in range(rng.randint(1, 5)):
            heads = rng.choice([1, 2, 3, 4])
            ratios = [0.0, 0.25, 0.5, 0.75, 1.0, rng.random()]
            stages.append(
                dict(
                    depth=rng.randint(1, 2),
                    embed_dim=rng.choice([8, 12, 16, 24, 32, 40, 48]),
                    num_heads=heads,
                    sr_ratio=rng.randint(1, 8),
                    idconv_groups=rng.randint(1, 4),
                    idconv_kernel_size=rng.choice([1, 3, 5, 7, 9]),
                    mlp_ratio=rng.choice([1, 1.5, 2, 3, 4]),
                    ffn_kernel_sizes=sorted(rng.sample([1, 3, 5, 7, 9], rng.randint(1, 4))),
                    attn_ratio=rng.choice(ratios),
                    ste_kernel_size=later.choice([1, 3, 5]),
                )
            )
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


def seeds_trainer(fake):
    """``train_seeds``'s interface over a fake single-seed trainer ``fake(spec, data, config, device,
    report)`` (the seeds trained one after another, each with ``config.seed`` set to it)."""

    def train(spec, data, seeds, config, device="cpu", report=None, pack=True):
        results = []
        for seed in seeds:
            hook = None if report is None else (lambda epoch, result: report(epoch, results + [result]))
            results.append(fake(spec, data, config.model_copy(update={"seed": seed}), device, hook))
        return results

    return train


def fake_zero_cost(spec, data, seed, batch_size=64, device="cpu"):
    """Zero-cost scores from the spec alone, in microseconds (the real ones build and run a network)."""
    width = float(sum(spec.embed_dims))
    return {"synflow": width / 10, "naswot": width + seed, "grad_norm": 100.0 / width}


def use_trainer(monkeypatch, fake) -> None:
    """Every training a study does (search trials, the random control, confirmation jobs) goes to
    ``fake`` instead, and zero-cost scores come from :func:`fake_zero_cost`."""
    import xnetspace.search.jobs as jobs
    import xnetspace.search.objective as objective

    for module in (objective, jobs):
        monkeypatch.setattr(module, "train_seeds", seeds_trainer(fake))
        monkeypatch.setattr(module, "zero_cost_scores", fake_zero_cost)
