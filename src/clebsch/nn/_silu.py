"""SiLU whose second derivative is one pass over memory.

Force training differentiates every activation twice: the forces are the
gradient of the energy, and the loss on the forces is differentiated again.
PyTorch differentiates ``silu_backward`` in about ten elementwise operations
(a sigmoid, products, sums, a negation), each a pass over an ``[edges,
channels]`` tensor; in an invariant or scalar+vector model (DimeNet++, the
Equivariant Transformer, ViSNet, PaiNN) these passes are a large share of the
training step, since such tensors no longer fit in the cache.

:func:`silu` computes the same function. Its first derivative is PyTorch's
``silu_backward`` (one pass); when that derivative is itself to be
differentiated (``create_graph=True``), it keeps the sigmoid, and its
derivative is one C kernel that reads the incoming gradient, the gradient it
multiplied, the input and the sigmoid, and writes both results:

.. math::
    \\mathrm{silu}'(x) = s\\,(1 + x(1 - s)), \\qquad
    \\mathrm{silu}''(x) = s(1 - s)\\,(2 + x(1 - 2s)), \\qquad s = \\sigma(x).

A third derivative (Hessians of force-trained models) runs PyTorch operations,
as does everything where the kernels cannot run (a GPU, no compiler,
``CLEBSCH_NATIVE=0``, tracing for ``torch.compile`` or export, ``vmap``): there
:func:`silu` is :func:`torch.nn.functional.silu` itself.
"""

from __future__ import annotations

import ctypes

import torch

from ..o3 import _native
from ..o3._cache import tracing

__all__ = ["silu", "SiLU"]

_torch_silu = torch.nn.functional.silu

_SOURCE = r"""
#include <stdint.h>

#define CHUNK 4096

/* ga = gh * silu'(a) */
static void grad_range(const T* restrict gh, const T* restrict a, const T* restrict s, T* restrict ga,
                       int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) ga[i] = gh[i] * (s[i] * ((T)1 + a[i] * ((T)1 - s[i])));
}

/* the derivatives of ga = gh * silu'(a), given gga: ggh = gga * silu'(a), gaa = gga * gh * silu''(a) */
static void grad_grad_range(const T* restrict gga, const T* restrict gh, const T* restrict a,
                            const T* restrict s, T* restrict ggh, T* restrict gaa, int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
        const T si = s[i], ai = a[i], g = gga[i];
        ggh[i] = g * (si * ((T)1 + ai * ((T)1 - si)));
        gaa[i] = g * gh[i] * (si * ((T)1 - si) * ((T)2 + ai * ((T)1 - (T)2 * si)));
    }
}

/* the loops stay outside OpenMP's outlined regions on one thread (there they lose their vectorisation) */
void silu_grad(const T* gh, const T* a, const T* s, T* ga, int64_t lo, int64_t hi, int threads) {
    if (threads <= 1) { grad_range(gh, a, s, ga, lo, hi); return; }
    const int64_t chunks = (hi - lo + CHUNK - 1) / CHUNK;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t c = 0; c < chunks; ++c) {
        const int64_t l = lo + c * CHUNK, h = l + CHUNK < hi ? l + CHUNK : hi;
        grad_range(gh, a, s, ga, l, h);
    }
}

void silu_grad_grad(const T* gga, const T* gh, const T* a, const T* s, T* ggh, T* gaa,
                    int64_t lo, int64_t hi, int threads) {
    if (threads <= 1) { grad_grad_range(gga, gh, a, s, ggh, gaa, lo, hi); return; }
    const int64_t chunks = (hi - lo + CHUNK - 1) / CHUNK;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t c = 0; c < chunks; ++c) {
        const int64_t l = lo + c * CHUNK, h = l + CHUNK < hi ? l + CHUNK : hi;
        grad_grad_range(gga, gh, a, s, ggh, gaa, l, h);
    }
}
"""

_P, _N = ctypes.c_void_p, ctypes.c_int64
_SIGNATURES = {
    "silu_grad": [_P] * 4 + [_N, _N, ctypes.c_int],
    "silu_grad_grad": [_P] * 6 + [_N, _N, ctypes.c_int],
}
# elements per thread below which one thread does the whole pass
_GRAIN = 32768
# below this many elements the Python function's fixed cost outweighs the passes it saves: PyTorch's SiLU
_NATIVE_FROM = 8192


def _kernels(dtype: torch.dtype):
    return _native.typed_kernels("silu", _SOURCE, dtype, _SIGNATURES)


def _native_ok(*tensors: torch.Tensor) -> bool:
    return _native.usable(*tensors) and _kernels(tensors[0].dtype) is not None


def _derivatives(s: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``silu'(a)`` and ``silu''(a)`` from ``s = sigmoid(a)``, in differentiable PyTorch operations."""
    first = s * (1 + a * (1 - s))
    second = s * (1 - s) * (2 + a * (1 - 2 * s))
    return first, second


def _grad(gh: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``gh * silu'(a)`` by the kernel, from ``s = sigmoid(a)`` (contiguous)."""
    gh, a = gh.contiguous(), a.contiguous()
    ga = torch.empty_like(a)
    silu_grad, _, openmp = _kernels(a.dtype)
    _native.parallel_for(silu_grad, a.numel(), gh.data_ptr(), a.data_ptr(), s.data_ptr(), ga.data_ptr(),
                         openmp=openmp, grain=_GRAIN)
    return ga


class _SiLUGrad(torch.autograd.Function):
    """``gh * silu'(a)`` given ``s = sigmoid(a)`` (not differentiated: a function of ``a``); its derivative is
    one kernel."""

    @staticmethod
    def forward(ctx, gh, a, s):
        ctx.save_for_backward(gh, a, s)  # the inputs themselves: their derivatives reach the graph
        return _grad(gh, a, s)

    @staticmethod
    def backward(ctx, gga):
        gh, a, s = ctx.saved_tensors
        if torch.is_grad_enabled() or not _native_ok(gga, gh, a, s):
            # a third derivative, or where the kernel cannot run: PyTorch operations (differentiable in a)
            if torch.is_grad_enabled():
                s = torch.sigmoid(a)
            first, second = _derivatives(s, a)
            return gga * first, gga * gh * second, None
        gga, gh, a = gga.contiguous(), gh.contiguous(), a.contiguous()
        ggh, gaa = torch.empty_like(a), torch.empty_like(a)
        _, silu_grad_grad, openmp = _kernels(a.dtype)
        _native.parallel_for(silu_grad_grad, a.numel(), gga.data_ptr(), gh.data_ptr(), a.data_ptr(), s.data_ptr(),
                             ggh.data_ptr(), gaa.data_ptr(), openmp=openmp, grain=_GRAIN)
        return ggh, gaa, None


class _SiLU(torch.autograd.Function):
    """``a * sigmoid(a)``, keeping the sigmoid: its derivatives need no exponential again."""

    @staticmethod
    def forward(ctx, a):
        s = torch.sigmoid(a.contiguous())
        ctx.save_for_backward(a, s)  # a itself, not a copy: its second derivative must reach the graph
        return a * s

    @staticmethod
    def backward(ctx, gh):
        a, s = ctx.saved_tensors
        if not _native_ok(gh, a, s):
            return torch.ops.aten.silu_backward(gh, a)
        if torch.is_grad_enabled():  # the derivative will be differentiated (create_graph)
            return _SiLUGrad.apply(gh, a, s)
        return _grad(gh, a, s)


def silu(x: torch.Tensor) -> torch.Tensor:
    r""":math:`x\, \sigma(x)`, elementwise; its second derivative is one pass over memory (see the module).

    The same numbers as :func:`torch.nn.functional.silu` (which it is, where the kernels cannot run).

    Examples
    --------
    >>> x = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64, requires_grad=True)
    >>> torch.allclose(silu(x), torch.nn.functional.silu(x))
    True
    """
    if tracing() or not x.requires_grad or x.numel() < _NATIVE_FROM or not _native_ok(x):
        return _torch_silu(x)
    return _SiLU.apply(x)


class SiLU(torch.nn.Module):
    """:func:`silu` as a module (for :class:`torch.nn.Sequential`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return silu(x)
