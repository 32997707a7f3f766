"""Helpers for custom autograd functions."""

from __future__ import annotations

import torch

__all__ = ["gradient_wanted"]


def gradient_wanted(t: torch.Tensor) -> bool:
    """Whether the backward pass now running will use a gradient with respect to ``t`` (an input of the custom
    function whose backward asks).

    ``ctx.needs_input_grad`` says whether an input requires a gradient at all; this says whether the pass
    running now reaches it: taking the forces (``autograd.grad`` of the energy with respect to the positions)
    needs no gradient of what depends on the weights alone. True where it cannot tell.
    """
    try:
        return bool(torch._C._will_engine_execute_node(torch.autograd.graph.get_gradient_edge(t).node))
    except (AttributeError, RuntimeError):
        return True
