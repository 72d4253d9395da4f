"""Small seeded networks for examples, benchmarks and tests.

Architectures are written in a one-line shorthand, layers separated by ``->`` (or ``,``):

* first token: the per-sample input shape, ``64`` (flat) or ``1x8x8`` (channels x height x width);
* ``N``: a linear layer with N outputs (the input must be flat: write ``flatten`` first);
* ``<C>c<K>[s<S>][p<P>][d<D>][g<G>]``: a 2-D convolution with C output channels, a KxK kernel,
  stride S, zero padding P, dilation D, G groups (defaults 1, 0, 1, 1), e.g. ``8c3``, ``16c3s2p1``;
* ``relu``, ``sigmoid``, ``tanh``, ``flatten``;
* ``r<shape>``: reshape each sample, e.g. ``r1x8x8``.

Example: ``build_conv("1x8x8 -> 8c3 -> relu -> flatten -> 10")``, or on a command line
``1x8x8,8c3,relu,flatten,10``. An MLP layout is just its sizes, ``2,128,2``. Weights use torch's default
initialisation under a fixed seed, drawn without touching the global RNG state.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from pcert.errors import ModelError

from .graph import LayerGraph
from .torch_model import Reshape, graph_from_sequential

_CONV = re.compile(r"(\d+)c(\d+)(?:s(\d+))?(?:p(\d+))?(?:d(\d+))?(?:g(\d+))?")
_SHAPE = re.compile(r"\d+(?:x\d+)*")
_ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


def _shape(token: str) -> tuple[int, ...]:
    return tuple(int(s) for s in token.split("x"))


def build_conv(arch: str, seed: int = 0) -> LayerGraph:
    """Build the network described by the shorthand ``arch`` (see the module docstring)."""
    tokens = [t.strip().lower() for t in re.split(r"->|,", arch)]
    if len(tokens) < 2 or not _SHAPE.fullmatch(tokens[0]):
        raise ModelError(f"architecture {arch!r}: expected '<input shape> -> <layer> -> ...', e.g. '1x8x8 -> 8c3 -> relu -> flatten -> 10'")
    input_shape = _shape(tokens[0])
    shape = input_shape
    modules: list[nn.Module] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for token in tokens[1:]:
            conv = _CONV.fullmatch(token)
            if token.isdigit():
                if len(shape) != 1:
                    raise ModelError(f"architecture {arch!r}: linear layer '{token}' needs a flat input, got {list(shape)}; add 'flatten'")
                modules.append(nn.Linear(shape[0], int(token)))
            elif conv:
                if len(shape) != 3:
                    raise ModelError(f"architecture {arch!r}: conv '{token}' needs a [C,H,W] input, got {list(shape)}")
                out_c, k, s, p, d, g = (int(v) if v else None for v in conv.groups())
                groups = g or 1
                if shape[0] % groups or out_c % groups:
                    raise ModelError(f"architecture {arch!r}: conv '{token}': channels {shape[0]} -> {out_c} not divisible by groups {groups}")
                modules.append(nn.Conv2d(shape[0], out_c, k, stride=s or 1, padding=p or 0, dilation=d or 1, groups=groups))
            elif token in _ACTIVATIONS:
                modules.append(_ACTIVATIONS[token]())
            elif token == "flatten":
                modules.append(nn.Flatten())
            elif token.startswith("r") and _SHAPE.fullmatch(token[1:]):
                target = _shape(token[1:])
                if torch.Size(target).numel() != torch.Size(shape).numel():
                    raise ModelError(f"architecture {arch!r}: cannot reshape {list(shape)} to {list(target)}")
                modules.append(Reshape(target))
            else:
                raise ModelError(f"architecture {arch!r}: unknown layer '{token}'")
            try:
                with torch.no_grad():
                    out = modules[-1](torch.zeros((1, *shape)))
            except RuntimeError:
                out = torch.zeros(0)
            if out.numel() == 0:
                raise ModelError(f"architecture {arch!r}: layer '{token}' gives an empty output for input {list(shape)}")
            shape = tuple(out.shape[1:])
    return graph_from_sequential(nn.Sequential(*modules), input_shape)


def build_mlp(sizes: Sequence[int], activation: str = "relu", seed: int = 0) -> LayerGraph:
    """MLP with layer widths ``sizes`` (input first, logits last), ``activation`` between layers."""
    if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
        raise ModelError(f"MLP sizes {list(sizes)}: need an input width and at least one layer, all >= 1")
    if activation not in _ACTIVATIONS:
        raise ModelError(f"MLP activation {activation!r}: expected one of {sorted(_ACTIVATIONS)}")
    hidden = [f"{int(s)} -> {activation}" for s in sizes[1:-1]]
    return build_conv(" -> ".join([str(int(sizes[0])), *hidden, str(int(sizes[-1]))]), seed)


def build_from_layout(kind: str, layout: str, *, seed: int = 0, activation: str = "relu") -> LayerGraph:
    """``pcert model``: ``mlp`` with comma-separated sizes (``2,128,2``) or ``conv`` shorthand.

    ``activation`` applies to ``mlp`` only; a conv layout names its activations itself.
    """
    if kind == "mlp":
        try:
            sizes = [int(s) for s in layout.split(",")]
        except ValueError:
            raise ModelError(f"MLP layout {layout!r}: expected comma-separated sizes such as 2,128,2") from None
        return build_mlp(sizes, activation, seed)
    if kind == "conv":
        return build_conv(layout, seed)
    raise ModelError(f"model kind {kind!r}: expected 'mlp' or 'conv'")
