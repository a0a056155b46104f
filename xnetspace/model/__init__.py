"""TransXNet's operators, one module per operator family, and the network built from them.

Paper: arXiv 2310.19380, section III; release: github.com/LMMMEng/TransXNet ``models/transxnet.py``.
Every module computes exactly what the release computes (same operator order, biases, norms and
initialisation), so release checkpoints load (:mod:`xnetspace.checkpoint`) and reproduce its
outputs. Each operator module holds, for its operator:

- the reference training form (the release's computation) and the fast training form (the same
  function, train mode included, with fewer or cheaper operators: ``fast = True`` on every
  :class:`~.folds.FastForm`, set for the whole network by ``TransXNet.set_train_form("fast")``);
- the inference form (``Fused*``), built directly from the training form's arguments
  (``TransXNet(spec, form="fused")``) or by the fold into it (``fuse()`` of every
  :class:`~.folds.Fusable`, timm's ``reparameterize_model`` convention;
  ``TransXNet.reparameterize()``), with its own ``cost()``;
- a static ``cost(hw, ...)`` beside the constructor, taking the same arguments: FLOPs as fvcore
  counts them, parameters, BatchNorm buffers and activation memory (:class:`.complexity.Cost`),
  which ``TransXNet.cost(spec, (H, W))`` sums over a spec beside the network's construction.

Imports point one way (each module imports only modules listed before it; tests/test_imports.py
keeps the graph acyclic)::

    kernels                                  the shared kernels (torch only)
    folds        <- kernels                  the shared folds; FastForm, Fusable, InferenceOnly
    complexity                               the Cost type (no torch)
    convs        <- kernels, folds, complexity
    stem         <- convs
    dpe          <- kernels, folds
    idconv       <- kernels, folds, convs
    osra         <- kernels, folds, convs, spec
    mixer        <- folds, convs, idconv, osra
    ffn          <- kernels, folds, convs
    block        <- folds, convs, stem, dpe, osra, mixer, ffn, spec
    head         <- complexity
    network      <- stem, block, head, spec, memory_limit

(every operator module also imports complexity). The model imports nothing that imports it
(tests/test_imports.py): :mod:`xnetspace.cost`, :mod:`xnetspace.memory` and the rest sit above.

=================  =================================================================  ===========
module             operator                                                           paper
=================  =================================================================  ===========
``kernels``        depthwise kernels merged; small-map depthwise and 1x1 convs as      eq. 1, 4;
                   matmuls (the fast forms')                                          III-C
``folds``          exact BN/affine folds, depthwise merges; ``InferenceOnly``         --
``complexity``     :class:`~.complexity.Cost`; fvcore's counts of torch's operators   --
``convs``          conv + BN, dense 1x1 and depthwise convs, layer scale              III, eq. 1
``stem``           stem (7x7, stride 4) and downsamples (3x3, stride 2)               III-A
``dpe``            dynamic position encoding ``x + DWConv7x7(x)``                     eq. 1
``idconv``         input-dependent depthwise conv                                     III-B1, eq. 3
``osra``           overlapping spatial-reduction attention, its position bias         III-B2, eq. 4
``mixer``          D-Mixer (the channel split) and STE                                III-B, eq. 2
``ffn``            MS-FFN                                                             III-C
``block``          block and stage (with the stage's position bias P)                 eq. 1, Fig. 2
``head``           GN -> pool -> linear                                               Fig. 2
``network``        TransXNet, ``build_model``, training and inference forms           III, Fig. 2
=================  =================================================================  ===========
"""

from .network import TRAIN_FORMS, TransXNet, build_model

__all__ = ["TransXNet", "build_model", "TRAIN_FORMS"]
