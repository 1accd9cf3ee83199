"""Building Torch-Pruning's dependency graph, with slimkit's trace recorded on the same pass."""

from __future__ import annotations

from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from slimkit._utils import keep_training_modes

from ._tracing import (
    ExampleInputs,
    OpRecorder,
    Trace,
    grad_fns,
    output_shapes,
    traceable_inputs,
)


class _LayerNormPruner(tp.pruner.function.LayernormPruner):  # type: ignore[misc]
    """Torch-Pruning 1.6.1's LayerNorm pruner keeps its channels in set order (``tensor.sort()``
    returns a copy), which permutes the weights when few channels remain; keep them sorted."""

    def prune_out_channels(self, layer: nn.LayerNorm, idxs: Any) -> nn.LayerNorm:
        dim: int = self.pruning_dim
        shape = list(layer.normalized_shape)
        keep = sorted(set(range(shape[dim])) - set(idxs))
        if layer.elementwise_affine:
            layer.weight = self._prune_parameter_and_grad(layer.weight, keep, dim)
            if layer.bias is not None:
                layer.bias = self._prune_parameter_and_grad(layer.bias, keep, dim)
        shape[dim] = len(keep)
        layer.normalized_shape = tuple(shape)
        return layer

    prune_in_channels = prune_out_channels


class _Graph(tp.DependencyGraph):  # type: ignore[misc]
    """A dependency graph that keeps Torch-Pruning's map from autograd nodes to graph nodes."""

    def __init__(self) -> None:
        super().__init__()
        self.REGISTERED_PRUNERS[tp.ops.OPTYPE.LN] = _LayerNormPruner()
        pruners = [p for p in self.REGISTERED_PRUNERS.values() if p is not None]
        self._in_channel_pruning_fn = {p.prune_in_channels for p in pruners}
        self._out_channel_pruning_fn = {p.prune_out_channels for p in pruners}

    def _trace_computational_graph(
        self, module2node: Any, output: Any, gradfn2module: Any, reused: Any, visited: Any = None
    ) -> Any:
        self._gfn2module = gradfn2module
        return super()._trace_computational_graph(
            module2node,
            output,
            gradfn2module,
            reused,
            visited=set() if visited is None else visited,
        )


def build_graph(module: nn.Module, example_inputs: ExampleInputs) -> tuple[Any, Trace]:
    """Trace ``module`` once: the dependency graph (without Torch-Pruning's index mappings,
    which :class:`~slimkit.prune._layout.Layout` sets) plus what :class:`Trace` records.

    Raises:
        TypeError: If ``example_inputs`` is not a tensor, tuple/list or dict.
        ValueError: If the model fails on ``example_inputs`` or returns no tensor.
    """
    args, kwargs = traceable_inputs(example_inputs)
    recorder, outputs = OpRecorder(module), []

    def forward_fn(model: nn.Module, _: Any) -> Any:
        with recorder:
            outputs.append(model(*args, **kwargs))
        return outputs[-1]

    dg = _Graph()
    dg.verbose, dg.model = False, module
    dg._module2name = {m: name for name, m in module.named_modules()}
    dg.ignored_params = []
    try:
        with keep_training_modes(module), torch.enable_grad():
            dg._param_to_name, dg.unwrapped_parameters = dg._detect_unwrapped_parameters(None)
            dg.module2node = dg._trace(module, args, forward_fn, output_transform=None)
            dg._build_dependency(dg.module2node)
    except Exception as err:
        if not outputs:
            raise ValueError(
                f"the model failed on example_inputs ({type(err).__name__}: {err}); pass inputs "
                "it accepts (a tensor, a tuple of positional inputs or a dict of keyword inputs)"
            ) from err
        raise ValueError(
            f"Torch-Pruning could not build the dependency graph ({type(err).__name__}: {err})"
        ) from err
    if not hasattr(dg, "_gfn2module"):
        raise ValueError("the model returned no tensor that depends on its inputs or weights")
    trace = Trace(
        recorder.calls,
        grad_fns((args, kwargs)),
        grad_fns(outputs[-1]),
        output_shapes(outputs[-1]),
        recorder.leaf_users,
    )
    return dg, trace
