"""Names vulture (``vulture``, configured in pyproject.toml) reports as unused that are used.

Vulture matches by name only, so each line whitelists the attribute everywhere; the imports name
where it is defined. Never imported (not part of the package): vulture only parses it. Functions
registered by a decorator (typer commands, Pydantic validators, SQLAlchemy event listeners) are
not listed here: ``ignore_decorators`` in pyproject.toml skips them.
"""

# ruff: noqa: B018 - every line is an attribute access that vulture counts as a use

import reprlib
import sqlite3

import torch
from optuna.samplers import BaseSampler
from pydantic import BaseModel

from xnetspace import cli
from xnetspace.bench import Run
from xnetspace.latency_table import LatencyTable
from xnetspace.model.network import TransXNet
from xnetspace.pack import Pack
from xnetspace.search import analysis_schema as A
from xnetspace.search import fidelity_schema as F
from xnetspace.search import summary as S
from xnetspace.search.names import ObjectiveName
from xnetspace.search.space import SearchSpace
from xnetspace.search.stats import blocked_separation
from xnetspace.spec import KnobMeta, NetworkSpec

# Called by torch: nn.Module.__call__ runs forward; autograd.Function's static protocol.
torch.nn.Module.forward
torch.autograd.Function.setup_context
torch.autograd.Function.generate_vmap_rule

# Read by Pydantic's metaclass.
BaseModel.model_config

# timm's model API (features_only, grad checkpointing, layer-decay groups, head resets).
TransXNet.set_grad_checkpointing
TransXNet.group_matcher
TransXNet.get_classifier
TransXNet.forward_intermediates
TransXNet.prune_intermediate_layers
TransXNet.head_hidden_size

# Optuna calls these on a sampler (search/evolution.py).
BaseSampler.infer_relative_search_space
BaseSampler.sample_relative

# Read by the standard library: reprlib.Repr's limits (text.py), sqlite3's autocommit switch (storage.py).
reprlib.Repr.maxlevel, reprlib.Repr.maxlist, reprlib.Repr.maxtuple, reprlib.Repr.maxdict
reprlib.Repr.maxstring, reprlib.Repr.maxother
sqlite3.Connection.isolation_level

# A signal handler takes (signum, frame) whether it reads them or not (cli._terminate).
cli._terminate.signum, cli._terminate.frame

# Read by name: Run.at(column) does getattr(run, column) over bench.RUN_COLUMNS; spec.stage_knobs(**where)
# does getattr(meta, key) (stage_knobs(schedulable=True), stage_knobs(since_release=True)).
Run.val_top1
KnobMeta.schedulable, KnobMeta.since_release

# Public API used outside xnetspace/ only (tests, benchmarks/, docs).
SearchSpace.random_specs
NetworkSpec.from_official_arch
blocked_separation
Pack.replica
KnobMeta.cost_free  # tests/test_knobs.py: every knob not declared cost_free changes some cost

# Enum members reached by value only: StudyConfig.objective is validated from a string (--objective).
ObjectiveName.TSE, ObjectiveName.SYNFLOW, ObjectiveName.NASWOT, ObjectiveName.GRAD_NORM
ObjectiveName.TOP1_FLOPS, ObjectiveName.TOP1_LATENCY, ObjectiveName.LOSS_LATENCY

# Written to the latency table's file by LatencyTable.to_dict (dataclasses.fields), read by people.
LatencyTable.torch_version

# Fields of the JSON files xnetspace writes (summary.json, analysis.json, refine.json, fidelity.json): filled
# from dicts by model_validate or set by keyword, read by whoever reads the files, exported as JSON Schemas.
S.Confirm.ci95
S.Difference.ci95, S.Difference.distinguishable
S._Confirmed.confirm_top1
S.Candidate.proxy_top1, S.Candidate.proxy_score
S.Sampled.proxy_top1, S.Sampled.proxy_score
S.Noise.between_std, S.Noise.proxy_seed_std
S.Separation.between_std, S.Separation.architecture_std, S.Separation.separated
S.TauRho.kendall_tau, S.TauRho.spearman_rho
S.Ceiling.kendall_tau, S.Ceiling.ci95
S.Fidelity.kendall_tau, S.Fidelity.spearman_rho, S.Fidelity.ci95, S.Fidelity.fraction_of_ceiling
S.Protocol.proxy_epochs
S.Summary.separation_top1, S.Summary.protocol
A.MarginalRow.mean_error, A.MarginalRow.ci95
A.StudySummary.edf_normalized, A.StudySummary.edf_top1_error
A.StudySummary.importance_ped_anova, A.StudySummary.single_valued
A.Comparison.ks_statistic, A.Comparison.ks_pvalue, A.Comparison.ks_statistic_normalized
A.Comparison.best_difference, A.Comparison.mean_difference_ci95, A.Comparison.best_difference_ci95
A.Normalization.method, A.Normalization.shared_bins, A.Normalization.dropped
A.AnalysisResult.importance_method, A.AnalysisResult.comparison
A.Evidence.ks_statistic, A.Evidence.ks_pvalue, A.Evidence.edf_gap, A.Evidence.edf_gap_normalized
A.Evidence.mean_difference_ci95, A.Evidence.mean_difference_plain, A.Evidence.mean_difference_plain_ci95
A.Evidence.normalized
A.RefineStep.first_test
A.Verification.requested, A.Verification.comparison, A.Verification.knobs_before, A.Verification.knobs_after
A.RefineResult.refined_space, A.RefineResult.refined_space_file, A.RefineResult.knobs_before
A.RefineResult.knobs_after, A.RefineResult.members_left, A.RefineResult.final_test
F.ScoreRow.precision_at_5_ci95
F.FidelityNoise.proxy_architecture_std, F.FidelityNoise.confirm_seed_std
F.RacingRow.best_ranked_first
F.FidelityResult.seconds_this_run, F.FidelityResult.seconds_trained
