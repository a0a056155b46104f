"""Packed replicas: S networks of one spec, each with its own weights, run as one.

Seeds are the unit of evidence in a search (each candidate's score is a mean over seeds), so the
same spec is trained several times with different seeds. :class:`Pack` holds the S replicas'
parameters and buffers stacked along a new first dimension (``torch.func.stack_module_state``)
and runs one network's forward over all of them with ``torch.func.vmap`` (PyTorch's
model-ensembling recipe; the grouped-layer idea of Packed-Ensembles, Laurent et al., ICLR 2023,
without writing each layer twice): every operator is called once for the S replicas, on inputs
(S, B, C, H, W), so the per-operator cost is paid once.

Nothing couples the replicas: the forward of replica i reads only its own slices of the stacked
tensors; a loss summed over replicas gives each its own gradients; an element-wise optimizer
(AdamW) on the stacked tensors is each replica's own optimizer; train-mode BatchNorm updates
each replica's running statistics. So a replica trained in a pack is the network its seed gives
trained alone, up to float rounding (``tests/test_pack.py``), as long as training draws no random
numbers inside the network: with dropout or drop-path each replica gets its own masks, but not
those a lone run would draw. Any replica comes out as an ordinary :class:`~xnetspace.model.
TransXNet` (:meth:`Pack.replica`): to save it, re-parameterise it or load it in timm.

How much packing saves depends on the device. On the 2-core CPU this was written on, a training
step of 4 tiny_cpu replicas took 0.8-0.9x the time of 4 separate steps: these networks are
bound by arithmetic there, not by per-operator overhead (a 4x larger batch took 2.8-3.5x the time
of one batch), so packing cannot gain much; on a GPU, which a small network leaves mostly idle,
S replicas run in about the time of one (``benchmarks/bench_train.py --pack``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from .model import TransXNet

__all__ = ["Pack"]


def _norm_in_param_dtype(module: nn.Module, args: tuple) -> tuple:
    """vmap's BatchNorm rule needs the input in its parameters' dtype, which plain BatchNorm does
    not (under bf16 autocast its input is bf16, its statistics float32): compute in theirs."""
    module._input_dtype = args[0].dtype
    return (args[0].to(module.weight.dtype if module.weight is not None else module.running_mean.dtype), *args[1:])


def _back_to_input_dtype(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
    return output.to(cast(torch.dtype, module._input_dtype))


class Pack:
    """S replicas of one :class:`~xnetspace.model.network.TransXNet` run as one network.

    Args:
        models: S networks of the same spec (their own initialisations, e.g. one per seed), all
            in the same training form and on the same device; their current weights and buffers
            are copied into the pack (the models themselves are not used afterwards).

    ``params`` and ``buffers`` map each parameter or buffer name of one network to the stacked
    (S, ...) tensor (parameters are leaf tensors that require grad: give ``params.values()`` to an
    optimizer). Calling the pack on (S, B, in_chans, H, W) images (replica i gets ``x[i]``), or on
    (B, in_chans, H, W) images that every replica gets, returns (S, B, num_classes) logits.

    Raises:
        ValueError: no models, or models of different specs.
    """

    def __init__(self, models: Sequence[TransXNet]):
        if not models:
            raise ValueError("a pack needs at least one network")
        digests = {m.spec.digest() for m in models}
        if len(digests) > 1:
            raise ValueError(f"a pack holds replicas of one spec; got {len(digests)} different specs")
        self.spec = models[0].spec
        self.size = len(models)
        params, buffers = stack_module_state(list(models))
        self.params: dict[str, Tensor] = params
        self.buffers: dict[str, Tensor] = buffers
        self._network = copy.deepcopy(models[0]).to("meta")  # the function; its own tensors are never read
        self._training = True
        for module in self._network.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.register_forward_pre_hook(_norm_in_param_dtype)
                module.register_forward_hook(_back_to_input_dtype)

    def _forward(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self._network, (params, buffers), (x,))

    def __call__(self, x: Tensor) -> Tensor:
        shared = x.dim() == 4
        return vmap(self._forward, in_dims=(0, 0, None if shared else 0), randomness="different")(
            self.params, self.buffers, x
        )

    def train(self, mode: bool = True) -> Pack:
        """Train mode (BatchNorm batch statistics and their running averages) or eval mode."""
        self._network.train(mode)
        self._training = mode
        return self

    def eval(self) -> Pack:
        return self.train(False)

    def named_parameters(self) -> list[tuple[str, Tensor]]:
        """(name, stacked (S, ...) parameter) pairs, in the network's order."""
        return list(self.params.items())

    def state_dict(self, index: int) -> dict[str, Tensor]:
        """Replica ``index``'s state dict: the keys of a :class:`TransXNet` of the spec, the tensors
        views of the pack's (detached)."""
        names = [name for name, _ in self._network.state_dict(keep_vars=True).items()]
        stacked = {**self.params, **self.buffers}
        return {name: stacked[name][index].detach() for name in names}

    def replica(self, index: int, device: torch.device | str | None = None) -> TransXNet:
        """Replica ``index`` as an ordinary network (its own copy of the weights), in the pack's
        training form and mode, on ``device`` (default: the pack's).

        Raises:
            IndexError: ``index`` outside ``0..S-1``.
        """
        if not -self.size <= index < self.size:
            raise IndexError(f"replica {index} of a pack of {self.size}")
        state = {k: v.clone() for k, v in self.state_dict(index).items()}
        device = device if device is not None else next(iter(state.values())).device
        network = copy.deepcopy(self._network).to_empty(device=device)
        network.load_state_dict(state)
        return network.train(self._training)
