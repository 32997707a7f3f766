"""Keep the memory that large tensors free inside the process, for the next step to reuse.

glibc's ``malloc`` serves every block above 32 MB with its own ``mmap`` and
gives it back to the kernel on ``free``. A model step on a large system
allocates and frees gigabytes of such blocks (the per-edge tensors), so every
step faults its memory back in page by page and the kernel zeroes each page:
on a 20,000-atom box this was half the time of a MACE step, and it grows
faster than the box (see the README's scaling figures). Telling glibc to
serve large blocks from its heap and never to trim it makes the second step
reuse the first step's memory: no page faults, and the same peak.

The process then keeps its peak memory until it exits (freed memory is
reused, not returned), which is what a long MD run or a training run wants.
``clebsch``'s command line, :class:`~clebsch.calculators.ClebschCalculator`,
the LAMMPS interface and the trainer switch it on; ``CLEBSCH_KEEP_FREED_MEMORY=0``
in the environment leaves the allocator as it is everywhere.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_state = {"on": False}


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl's mallopt does nothing)
        return libc if hasattr(libc, "mallopt") else None
    except (OSError, AttributeError):
        return None


def keep_freed_memory(enable: bool = True) -> bool:
    """Serve large allocations from the heap and keep freed memory for reuse (glibc only).

    Process-wide and cheap to call more than once. Returns True when the
    allocator now keeps freed memory; False where it cannot (not glibc), where
    ``CLEBSCH_KEEP_FREED_MEMORY=0`` is set, or after ``enable=False``, which
    restores glibc's defaults (blocks above the threshold mapped and unmapped,
    a trimmed heap).

    Examples
    --------
    >>> import clebsch
    >>> clebsch.keep_freed_memory() in (True, False)
    True
    """
    if enable and os.environ.get("CLEBSCH_KEEP_FREED_MEMORY", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    libc = _glibc()
    if libc is None:
        return False
    if enable:
        if not _state["on"]:
            # mmap off: large blocks come from the heap; trimming off (-1): the heap keeps what is freed
            ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, -1) == 1
            _state["on"] = bool(ok)
        return _state["on"]
    if _state["on"]:
        libc.mallopt(_M_MMAP_MAX, 65536)
        libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
        libc.malloc_trim(0)
        _state["on"] = False
    return False
