"""Benchmark of clebsch.o3 against e3nn 0.6 (and sphericart-torch if installed), same process.

Spherical harmonics of 100,000 random float32 vectors (normalize=True,
"component") for lmax = 2, 3, 6, forward and forward+backward; Wigner D of
10,000 rotations at l = 2 and 6. Two threads. Prints median times over
several repeats (after warm-up) and the speed-up of clebsch over each reference.

Two orders of timing, each printed as its own table:

* ``interleaved``: the implementations take turns, call by call, so that load
  from other jobs hits all alike. Each call then starts with caches full of
  the previous implementation's data, and its output often lands on pages the
  allocator has just handed back to the kernel (the "faults" column: minor page
  faults per call, each a few microseconds on a virtual machine). Memory-bound
  calls such as the spherical harmonics' forward pass, which writes 6.4 MB at
  lmax = 3, pay most for this.
* ``back-to-back``: all repeats of one implementation, then the next (warm
  caches, as in ``torch.utils.benchmark``).

``clebsch`` is the default path (the generated C kernel, see
``clebsch.o3._native``); ``clebsch-pt`` the PyTorch path used where no C
compiler is found (``CLEBSCH_NATIVE=0``).

Run: ``python benchmarks/o3.py [--order interleaved|back-to-back|both] [--repeats 21]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

try:
    import resource
except ImportError:  # pragma: no cover - not on Windows
    resource = None

import torch

from clebsch import o3

try:
    from e3nn import o3 as e3o3
except ImportError:  # pragma: no cover
    e3o3 = None

try:
    import sphericart.torch as sphericart_torch
except ImportError:  # pragma: no cover
    sphericart_torch = None


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def median_times(fns: dict, repeats: int = 21, warmup: int = 3, order: str = "interleaved") -> dict:
    """``{name: (median seconds, minor page faults per call)}`` for each function, timed in ``order``."""
    times = {name: [] for name in fns}
    faults = dict.fromkeys(fns, 0)

    def timed(name, f):
        f0 = _minor_faults()
        t0 = time.perf_counter()
        f()
        times[name].append(time.perf_counter() - t0)
        faults[name] += _minor_faults() - f0

    if order == "interleaved":
        for _ in range(warmup):
            for f in fns.values():
                f()
        for _ in range(repeats):
            for name, f in fns.items():
                timed(name, f)
    else:
        for name, f in fns.items():
            for _ in range(warmup):
                f()
            for _ in range(repeats):
                timed(name, f)
    return {name: (statistics.median(t), faults[name] / repeats) for name, t in times.items()}


def without_native(fn, *args):
    """``fn`` on clebsch's PyTorch path (what runs where no C compiler is found)."""
    os.environ["CLEBSCH_NATIVE"] = "0"
    try:
        return fn(*args)
    finally:
        del os.environ["CLEBSCH_NATIVE"]


def sh_cases(lmax: int, x: torch.Tensor):
    ls = list(range(lmax + 1))
    cases = {"clebsch": lambda v: o3.spherical_harmonics(ls, v, True, "component"),
             "clebsch-pt": lambda v: without_native(o3.spherical_harmonics, ls, v, True, "component")}
    if e3o3 is not None:
        cases["e3nn"] = lambda v: e3o3.spherical_harmonics(ls, v, True, normalization="component")
    if sphericart_torch is not None:
        calc = sphericart_torch.SphericalHarmonics(lmax)
        cases["sphericart"] = lambda v: calc(v)
    return cases


def bench_sh(n: int = 100_000, repeats: int = 21, order: str = "interleaved"):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    xg = x.clone().requires_grad_()
    rows = []
    for lmax in (2, 3, 6):
        cases = sh_cases(lmax, x)

        def fwd_bwd(f):
            def run():
                y = f(xg)
                return torch.autograd.grad(y, xg, torch.ones_like(y))

            return run

        fwd = median_times({name: (lambda f=f: f(x)) for name, f in cases.items()}, repeats, order=order)
        fb = median_times({name: fwd_bwd(f) for name, f in cases.items()}, repeats, order=order)
        rows += [(f"sh lmax={lmax}", name, *fwd[name], *fb[name]) for name in cases]
    return rows


def bench_wigner(n: int = 10_000, repeats: int = 21, order: str = "interleaved"):
    g = torch.Generator().manual_seed(1)
    a, b, c = o3.rand_angles(n, generator=g)
    rows = []
    for l in (2, 6):
        fns = {"clebsch": lambda: o3.wigner_D(l, a, b, c)}
        if e3o3 is not None:
            fns["e3nn"] = lambda: e3o3.wigner_D(l, a, b, c)
        t = median_times(fns, repeats, order=order)
        rows += [(f"wigner_D l={l}", name, *t[name], None, None) for name in fns]
    return rows


def report(rows) -> None:
    ours = {case: (fwd, fb) for case, name, fwd, _, fb, _ in rows if name == "clebsch"}
    print(f"{'case':<16}{'impl':<12}{'fwd ms':>9}{'faults':>8}{'fwd+bwd ms':>12}{'faults':>8}"
          f"{'fwd speed-up':>14}{'fwd+bwd speed-up':>18}")
    for case, name, fwd, f_fwd, fb, f_fb in rows:
        r_b = f"{fb / ours[case][1]:>17.2f}x" if fb is not None else ""
        fb_ms, f_fb = (f"{fb * 1e3:>12.3f}", f"{f_fb:>8.0f}") if fb is not None else (f"{'-':>12}", f"{'-':>8}")
        print(f"{case:<16}{name:<12}{fwd * 1e3:>9.3f}{f_fwd:>8.0f}{fb_ms}{f_fb}{fwd / ours[case][0]:>13.2f}x{r_b}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--order", choices=["interleaved", "back-to-back", "both"], default="both")
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    torch.set_num_threads(2)
    torch.set_default_dtype(torch.float32)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, float32"
          f"{', e3nn ' + __import__('e3nn').__version__ if e3o3 else ', e3nn not installed'}"
          f"{', sphericart-torch' if sphericart_torch else ', sphericart-torch not installed'}")
    for order in (["interleaved", "back-to-back"] if args.order == "both" else [args.order]):
        print(f"\n{order} (median of {args.repeats}; faults: minor page faults per call)")
        report(bench_sh(repeats=args.repeats, order=order) + bench_wigner(repeats=args.repeats, order=order))
    print("speed-up = time of the implementation in the row / time of clebsch (clebsch rows are 1.00x)")


if __name__ == "__main__":
    main()
