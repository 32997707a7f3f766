"""Caches of constant tensors that stay real while a model is traced.

``torch.export`` and ``torch.compile`` run Python with fake tensors. A table
built and cached the first time it is needed would then hold a fake tensor,
and every later eager call would fail. The builders here run with fake
tensors switched off, and per-dtype copies are cached only outside tracing.
"""

from __future__ import annotations

import contextlib
import functools

import torch

__all__ = ["constant_cache", "real_tensors", "tracing"]


def tracing() -> bool:
    """Whether ``torch.export``, ``torch.compile`` or ``torch.jit.trace`` is tracing the caller."""
    return bool(torch.compiler.is_exporting() or torch.compiler.is_compiling() or torch.jit.is_tracing())


@contextlib.contextmanager
def real_tensors():
    """Build real tensors inside, even under a fake-tensor mode."""
    try:
        from torch._subclasses.fake_tensor import unset_fake_temporarily
    except ImportError:  # pragma: no cover - very old torch
        yield
        return
    with unset_fake_temporarily():
        yield


def constant_cache(fn):
    """``functools.lru_cache`` whose misses are computed with real tensors."""
    cached = functools.lru_cache(maxsize=None)(fn)

    @functools.wraps(fn)
    def wrapper(*args):
        with real_tensors():
            return cached(*args)

    wrapper.cache_clear = cached.cache_clear
    return wrapper
