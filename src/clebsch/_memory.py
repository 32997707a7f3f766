"""Keep the memory that large tensors free inside the process, for the next step to reuse.

A model step on a large system allocates and frees gigabytes of per-edge
tensors. glibc's ``malloc`` gives each large block its own ``mmap`` and unmaps
it on ``free``, so every step faults its memory back in page by page and the
kernel zeroes each page: on a 20,000-atom water box this was 19-20 s of a 44 s
MACE step, and it grows faster than the box. Serving large blocks from
glibc's heap instead (``mallopt``) removes the faults but fragments: PyTorch
asks for 64-byte aligned blocks, which a freed block of the same size cannot
serve, and one step pattern needed twice the memory.

:func:`keep_freed_memory` installs a small allocator (C++, built on first use
with ``$CXX``, default ``c++``, against PyTorch's own headers in about a
second, cached beside the compiled kernels) as PyTorch's CPU allocator: blocks
of 1 MB and more are whole pages from ``mmap`` that stay mapped when a tensor
frees them; freed ranges are coalesced with their free neighbours and the next
request takes the smallest one that fits (best fit, the rest of the range
stays kept). Smaller blocks go to PyTorch's default allocator, i.e. glibc's
``malloc``, which is told (``mallopt``) to serve them from its heap and never
to trim that heap: by default it maps blocks from 128 KiB on and gives the
heap's free top back, so a small molecule's training step, thousands of
0.1-1 MB tensors, faulted thousands of pages back in every step. The process
never keeps more than the largest live working set it has had plus 1/16
(``SLACK_PERMILLE``) or 32 MiB (``SLACK_MIN_BYTES``), whichever is more
(the smallest kept ranges are unmapped first), so its
peak is that of PyTorch's allocator within a few per cent, and it holds that
peak until it exits, which is what an MD or training run wants.

``clebsch``'s command line, :class:`~clebsch.calculators.ClebschCalculator`, the
LAMMPS interface and the trainer switch it on; ``CLEBSCH_KEEP_FREED_MEMORY=0``
leaves PyTorch's allocator as it is everywhere. Linux only (elsewhere, and
without a C++ compiler, nothing changes; the latter with one warning).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

__all__ = ["keep_freed_memory", "memory_stats"]

MIN_BYTES = 1 << 20
"""Blocks from this size on are kept; smaller ones go to PyTorch's default allocator."""
SLACK_PERMILLE = 62
"""Kept + live bytes never exceed the largest live working set seen by more than this (per mille) ..."""
SLACK_MIN_BYTES = 32 << 20
"""... or than this, where it is more: with a peak of a few MB, 1/16 of it left no room for blocks of other
sizes, and a small molecule's steps mapped and unmapped the same megabytes every step."""

_SOURCE = r"""// clebsch: a CPU allocator that keeps the large blocks tensors free, for the next ones (see clebsch/_memory.py).
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <map>
#include <mutex>
#include <set>
#include <unordered_map>
#include <utility>

namespace {

constexpr std::size_t kPage = 4096;
std::size_t threshold = 1u << 20;  // smaller blocks go to PyTorch's default allocator
std::mutex mu;
std::map<char*, std::size_t> free_by_address;           // kept pages, coalesced
std::set<std::pair<std::size_t, char*>> free_by_size;    // the same ranges, for the best fit
std::unordered_map<void*, std::size_t> live;             // blocks in tensors
std::size_t live_bytes = 0, free_bytes = 0, peak_bytes = 0, slack_permille = 0, slack_min = 0;
std::uint64_t maps = 0, reuses = 0, unmapped = 0;
bool installed = false;
c10::Allocator* fallback = nullptr;

void add_free(char* p, std::size_t n) {
  auto next = free_by_address.lower_bound(p);
  if (next != free_by_address.end() && p + n == next->first) {  // merge with the range after
    free_by_size.erase({next->second, next->first});
    n += next->second;
    next = free_by_address.erase(next);
  }
  if (next != free_by_address.begin()) {  // and with the range before
    auto prev = std::prev(next);
    if (prev->first + prev->second == p) {
      free_by_size.erase({prev->second, prev->first});
      p = prev->first;
      n += prev->second;
      free_by_address.erase(prev);
    }
  }
  free_by_address.emplace(p, n);
  free_by_size.emplace(n, p);
}

void remove_free(char* p, std::size_t n) {
  free_by_address.erase(p);
  free_by_size.erase({n, p});
}

// Never hold more than the largest live working set seen: unmap the smallest kept ranges first.
void trim_locked() {
  std::size_t slack = peak_bytes / 1000 * slack_permille;
  std::size_t bound = peak_bytes + (slack > slack_min ? slack : slack_min);
  while (live_bytes + free_bytes > bound && !free_by_size.empty()) {
    auto [n, p] = *free_by_size.begin();
    std::size_t excess = live_bytes + free_bytes - bound;
    std::size_t cut = excess >= n ? n : (excess + kPage - 1) / kPage * kPage;
    remove_free(p, n);
    munmap(p + (n - cut), cut);  // the range's tail; a head that is left stays kept
    if (cut < n) add_free(p, n - cut);
    free_bytes -= cut;
    unmapped += cut;
  }
}

void release(void* ptr) {
  {
    std::lock_guard<std::mutex> guard(mu);
    auto it = live.find(ptr);
    if (it != live.end()) {
      std::size_t n = it->second;
      live.erase(it);
      live_bytes -= n;
      if (!installed) {  // freed after the allocator was put away: nothing will reuse it
        munmap(ptr, n);
        unmapped += n;
        return;
      }
      free_bytes += n;
      add_free(static_cast<char*>(ptr), n);
      return;
    }
  }
  fallback->raw_deleter()(ptr);  // a small block of the default allocator
}

struct KeepingAllocator final : c10::Allocator {
  c10::DataPtr allocate(std::size_t nbytes) override {
    if (nbytes < threshold) return fallback->allocate(nbytes);
    std::size_t n = (nbytes + kPage - 1) / kPage * kPage;
    char* p = nullptr;
    bool fresh = false;
    {
      std::lock_guard<std::mutex> guard(mu);
      auto it = free_by_size.lower_bound({n, nullptr});
      if (it != free_by_size.end()) {  // best fit; the rest of the range stays kept
        auto [have, q] = *it;
        remove_free(q, have);
        if (have > n) add_free(q + n, have - n);
        free_bytes -= n;
        p = q;
        ++reuses;
      }
    }
    if (p == nullptr) {
      void* m = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (m == MAP_FAILED) return fallback->allocate(nbytes);
      p = static_cast<char*>(m);
      fresh = true;
    }
    {
      std::lock_guard<std::mutex> guard(mu);
      maps += fresh;
      live.emplace(p, n);
      live_bytes += n;
      if (live_bytes > peak_bytes) peak_bytes = live_bytes;
      trim_locked();
    }
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &release; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

KeepingAllocator keeping;

}  // namespace

extern "C" {

int clebsch_keep_install(std::size_t min_bytes, std::size_t slack, std::size_t slack_floor) {
  slack_permille = slack;
  slack_min = slack_floor;
  if (fallback == nullptr) fallback = c10::GetDefaultCPUAllocator();
  threshold = min_bytes;
  c10::SetCPUAllocator(&keeping, 100);
  std::lock_guard<std::mutex> guard(mu);
  installed = true;
  return 1;
}

int clebsch_keep_uninstall() {
  if (fallback != nullptr) c10::SetCPUAllocator(fallback, 100);
  std::lock_guard<std::mutex> guard(mu);
  installed = false;
  for (auto& [p, n] : free_by_address) munmap(p, n);
  unmapped += free_bytes;
  free_by_address.clear();
  free_by_size.clear();
  free_bytes = 0;
  peak_bytes = live_bytes;
  return 1;
}

void clebsch_keep_stats(std::uint64_t* out) {
  std::lock_guard<std::mutex> guard(mu);
  out[0] = live_bytes;
  out[1] = free_bytes;
  out[2] = peak_bytes;
  out[3] = maps;
  out[4] = reuses;
  out[5] = unmapped;
}
}
"""

_LOCK = threading.Lock()
_state = {"lib": None, "failed": None, "on": False}


def _opted_out() -> bool:
    return os.environ.get("CLEBSCH_KEEP_FREED_MEMORY", "1").strip().lower() in ("0", "false", "no", "off")


def _build(source: str, target: Path, torch_dir: Path, abi: int) -> None:
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler {compiler!r} on PATH (set CXX)")
    lib = torch_dir / "lib"
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src, out = Path(tmp) / "keep.cpp", Path(tmp) / target.name
        src.write_text(source)
        run = subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-std=c++17", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
                              "-I", str(torch_dir / "include"), str(src), "-o", str(out), "-L", str(lib), "-lc10",
                              f"-Wl,-rpath,{lib}"], capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {run.stderr.strip()[-500:]}")
        os.replace(out, target)  # atomic: concurrent processes never load a half-written file


def _library():
    """The allocator's library, built on first use; None where it cannot be (with one warning)."""
    if _state["lib"] is not None or _state["failed"] is not None:
        return _state["lib"]
    import torch

    from .o3._native import _built

    torch_dir = Path(torch.__file__).resolve().parent
    abi = int(bool(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True)))
    digest = hashlib.sha256(f"{_SOURCE}{torch.__version__}{torch_dir}{abi}".encode()).hexdigest()[:20]
    with _LOCK:
        if _state["lib"] is not None or _state["failed"] is not None:
            return _state["lib"]
        try:
            target = _built(f"keep-freed-memory-{digest}.so", _SOURCE,
                            compile=lambda source, path: _build(source, path, torch_dir, abi))
            lib = ctypes.CDLL(str(target))
            lib.clebsch_keep_install.argtypes = [ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t]
            lib.clebsch_keep_stats.argtypes = [ctypes.POINTER(ctypes.c_uint64)]
            lib.clebsch_keep_stats.restype = None
            _state["lib"] = lib
        except (OSError, RuntimeError) as err:
            _state["failed"] = str(err)
            warnings.warn(f"clebsch: cannot keep freed memory for reuse ({err}); PyTorch's allocator is used as "
                          "it is (large steps fault their memory back in). Set CLEBSCH_KEEP_FREED_MEMORY=0 to "
                          "silence this.", RuntimeWarning, stacklevel=3)
        return _state["lib"]


def keep_freed_memory(enable: bool = True) -> bool:
    """Keep the large blocks that tensors free, for the next ones to reuse (PyTorch's CPU allocator).

    Process-wide and cheap to call again. Returns True when freed memory is now
    kept; False where it cannot be (not Linux, no C++ compiler), where
    ``CLEBSCH_KEEP_FREED_MEMORY=0`` is set, or after ``enable=False``, which puts
    PyTorch's default allocator back and unmaps the kept blocks (blocks still
    in use are unmapped when their tensors free them).

    Examples
    --------
    >>> import clebsch
    >>> clebsch.keep_freed_memory() in (True, False)
    True
    """
    if not sys.platform.startswith("linux") or (enable and _opted_out()):
        return False
    lib = _library() if enable or _state["on"] else None
    if lib is None:
        return False
    if enable and not _state["on"]:
        _state["on"] = bool(lib.clebsch_keep_install(MIN_BYTES, SLACK_PERMILLE, SLACK_MIN_BYTES))
        if _state["on"]:
            _glibc_keep(True)
    elif not enable and _state["on"]:
        lib.clebsch_keep_uninstall()
        _glibc_keep(False)
        _state["on"] = False
    return _state["on"]


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_GLIBC_DEFAULT = 128 * 1024  # both thresholds' initial values


def _glibc_keep(enable: bool) -> bool:
    """Blocks below :data:`MIN_BYTES` (PyTorch's default allocator, i.e. glibc's ``malloc``): from the heap,
    never from their own ``mmap``, and the heap's free top never given back while the process runs.

    glibc maps blocks from 128 KiB on (a threshold it raises as such blocks are freed) and trims its heap
    whenever more than twice that threshold lies free at the top, so a training step of a small molecule,
    whose working set is thousands of 0.1-1 MB tensors, faulted thousands of pages back in every step
    (the Equivariant Transformer's step on 16 ethanol frames: ~6,000 faults, a quarter of its time). The
    heap then holds the largest working set of small blocks the process has had. With ``enable=False`` both
    thresholds go back to their initial values (fixed, no longer raised by glibc). False where there is no
    glibc."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trim, mmap = (2**31 - 1, MIN_BYTES) if enable else (_GLIBC_DEFAULT, _GLIBC_DEFAULT)
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))


def memory_stats() -> dict:
    """The kept allocator's bytes and counts: ``live`` (in tensors), ``kept`` (freed, mapped, for reuse),
    ``peak`` (the most ever live; live + kept stays within ``SLACK_PERMILLE`` of it or ``SLACK_MIN_BYTES``),
    ``maps`` (fresh blocks), ``reuses`` (blocks served from kept memory) and ``unmapped`` (kept bytes given
    back to keep the bound); zeros before use."""
    values = (ctypes.c_uint64 * 6)()
    if _state["lib"] is not None:
        _state["lib"].clebsch_keep_stats(values)
    return dict(zip(("live", "kept", "peak", "maps", "reuses", "unmapped"), (int(v) for v in values)))
