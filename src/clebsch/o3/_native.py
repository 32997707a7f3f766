"""Small C kernels, compiled on first use with the system's C compiler and cached on disk.

Some hot loops (the spherical harmonics of many vectors) are a few arithmetic
operations per element and memory-bound in eager PyTorch, where every
operation makes one pass over memory. clebsch generates plain C99 for them
(no Python or torch headers, so compiling takes a fraction of a second), builds
a shared library with ``$CC`` (default ``cc``) for this machine's CPU, and calls
it through :mod:`ctypes` on the tensors' memory. Built with OpenMP, a kernel
splits its loop in PyTorch's own OpenMP runtime (the ``libgomp.so.1`` already
loaded) on ``torch.get_num_threads()`` threads; without OpenMP, slices of the
range run on a small pool of Python threads.

The libraries are cached in ``$CLEBSCH_CACHE_DIR`` (default
``$XDG_CACHE_HOME/clebsch`` or ``~/.cache/clebsch``) under the hash of their
source. Without a working compiler, or with ``CLEBSCH_NATIVE=0``, every caller
falls back to its PyTorch implementation, which gives the same numbers; the
reason is given once as a :class:`RuntimeWarning`.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ._cache import tracing

__all__ = ["enabled", "load", "typed_kernels", "parallel_for", "cache_dir", "usable"]

_FLAGS = ["-O3", "-std=c99", "-fPIC", "-shared", "-fno-math-errno"]
_LOCK = threading.Lock()
_LIBRARIES: dict = {}
_FAILED: dict = {}
_TYPED: dict = {}
_POOL = None
_OPENMP_PID = None


def enabled() -> bool:
    """Whether native kernels may be used (``CLEBSCH_NATIVE`` is not ``0``)."""
    return os.environ.get("CLEBSCH_NATIVE", "1") != "0"


def usable(*tensors: torch.Tensor) -> bool:
    """Whether a kernel may read and write these tensors' memory now.

    Kernels are allowed, nothing is traced (``torch.compile``, export), and every
    tensor is a plain CPU ``float32`` / ``float64`` tensor of the first one's dtype:
    not a fake or functional tensor of a tracer, nor a ``vmap`` batch.
    """
    if not enabled() or tracing():
        return False
    dtype = tensors[0].dtype
    for t in tensors:
        if (t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64) or t.dtype != dtype
                or (type(t) is not torch.Tensor and not isinstance(t, torch.nn.Parameter))
                or torch._C._functorch.is_functorch_wrapped_tensor(t) or torch._is_functional_tensor(t)):
            return False
    return True


def cache_dir() -> Path:
    """Where compiled kernels are kept."""
    root = os.environ.get("CLEBSCH_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "clebsch"


@functools.lru_cache(maxsize=None)
def _cpu_signature() -> str:
    """The CPU's model and instruction-set flags: a library built for ``-march=native`` is tied to them
    (a home folder shared by different machines must not hand one CPU's build to another)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.machine() + platform.processor()


def _compile(source: str, target: Path) -> None:
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C compiler {compiler!r} on PATH (set CC)")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "kernel.c"
        src.write_text(source)
        out = Path(tmp) / target.name
        errors = []
        # OpenMP shares PyTorch's runtime (the same libgomp.so.1, already loaded) and thread count;
        # some compilers or CPUs refuse -fopenmp or -march=native
        for extra in (["-fopenmp", "-march=native"], ["-fopenmp"], ["-march=native"], []):
            run = subprocess.run([compiler, *_FLAGS, *extra, str(src), "-o", str(out), "-lm"],
                                 capture_output=True, text=True)
            if run.returncode == 0:
                os.replace(out, target)  # atomic: concurrent processes never load a half-written file
                return
            errors.append(run.stderr.strip()[-500:])
        raise RuntimeError(f"{compiler} failed: {errors[-1]}")


def _built(filename: str, source: str, compile=None) -> Path:
    """The compiled library, from the cache or built now; a temporary folder if the cache is not writable.

    ``compile(source, target)`` builds it (default: the C kernels' compiler and flags)."""
    for folder in (cache_dir(), Path(tempfile.gettempdir()) / f"clebsch-{os.getuid() if hasattr(os, 'getuid') else 0}"):
        path = folder / filename
        if path.exists():
            return path
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            (compile or _compile)(source, path)
            return path
    raise RuntimeError(f"no writable folder for compiled kernels (tried {cache_dir()})")


_OPENMP_PROBE = """
int clebsch_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
"""


def load(name: str, source: str):
    """The :class:`ctypes.CDLL` built from ``source``, or ``None`` where kernels cannot be built.

    ``name`` only labels the cached file; the hash of ``source``, the flags and the CPU identify it.
    """
    if not enabled():
        return None
    source = source + _OPENMP_PROBE
    digest = hashlib.sha256((source + " ".join(_FLAGS) + _cpu_signature()).encode()).hexdigest()[:20]
    key = (name, digest)
    lib = _LIBRARIES.get(key)
    if lib is not None or key in _FAILED:
        return lib
    with _LOCK:
        if key in _LIBRARIES or key in _FAILED:
            return _LIBRARIES.get(key)
        try:
            lib = ctypes.CDLL(str(_built(f"{name}-{digest}.so", source)))
        except (OSError, RuntimeError) as err:
            _FAILED[key] = str(err)
            if len(_FAILED) == 1:
                warnings.warn(f"clebsch: native kernel {name!r} unavailable ({err}); using the PyTorch "
                              "implementation (same numbers, slower). Set CLEBSCH_NATIVE=0 to silence this.",
                              RuntimeWarning, stacklevel=3)
            return None
        lib.clebsch_openmp.restype = ctypes.c_int
        lib.openmp = bool(lib.clebsch_openmp())
        _LIBRARIES[key] = lib
        return lib


def typed_kernels(name: str, source: str, dtype: torch.dtype, signatures: dict, **defines: int):
    """The functions of ``source`` built for ``dtype`` (``T`` is ``float`` or ``double``) and the integer
    ``defines`` (``#define KEY value``, constants the compiler unrolls and vectorises for), cached per
    ``(name, dtype, defines)``.

    ``signatures`` maps each function's name to its :mod:`ctypes` argument types (the functions return
    nothing). Returns ``(*functions, openmp)`` in that order, or ``None`` where they cannot be built
    (another dtype, no compiler, ``CLEBSCH_NATIVE=0``).
    """
    key = (name, dtype, tuple(defines.items()))
    if not enabled():
        return None
    if key not in _TYPED:
        ctype = {torch.float32: "float", torch.float64: "double"}.get(dtype)
        head = f"#define T {ctype}\n" + "".join(f"#define {k} {int(v)}\n" for k, v in defines.items())
        lib = load("_".join([name, *(str(int(v)) for v in defines.values())]), head + source) if ctype else None
        fns = None
        if lib is not None:
            fns = []
            for fname, argtypes in signatures.items():
                fn = getattr(lib, fname)
                fn.argtypes, fn.restype = argtypes, None
                fns.append(fn)
            fns = (*fns, lib.openmp)
        _TYPED[key] = fns
    return _TYPED[key]


def parallel_for(fn, n: int, *pointers, openmp: bool = False, grain: int = 8192) -> None:
    """Run ``fn(*pointers, start, stop, threads)`` over ``[0, n)`` on up to ``torch.get_num_threads()`` threads.

    A kernel built with OpenMP splits the range itself, in PyTorch's own
    thread pool (``fn(*pointers, 0, n, threads)``). Otherwise the range is cut
    into slices run by a small pool of Python threads (ctypes releases the GIL
    during each call), each slice on one thread.
    """
    global _POOL, _OPENMP_PID
    threads = max(1, min(torch.get_num_threads(), n // grain))
    if openmp:
        # GNU OpenMP cannot start threads again in a child forked after it ran: one thread there
        if threads > 1:
            if _OPENMP_PID is None:
                _OPENMP_PID = os.getpid()
            elif _OPENMP_PID != os.getpid():
                threads = 1
        fn(*pointers, 0, n, threads)
        return
    if threads == 1:
        fn(*pointers, 0, n, 1)
        return
    # a forked child inherits the pool object but not its threads: it needs its own
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[2] < threads:
        _POOL = (os.getpid(), ThreadPoolExecutor(max_workers=threads, thread_name_prefix="clebsch-native"), threads)
    pool = _POOL[1]
    bounds = [n * i // threads for i in range(threads + 1)]
    futures = [pool.submit(fn, *pointers, bounds[i], bounds[i + 1], 1) for i in range(1, threads)]
    fn(*pointers, bounds[0], bounds[1], 1)
    for f in futures:
        f.result()
