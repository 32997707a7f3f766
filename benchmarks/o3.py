"""Benchmark of clebsch.o3 against e3nn 0.6 (and sphericart-torch if installed), same process.

Spherical harmonics of 100,000 random float32 vectors (normalize=True,
"component") for lmax = 2, 3, 6, forward and forward+backward; Wigner D of
10,000 rotations at l = 2 and 6. Two threads. Prints median times over
several repeats (after warm-up) and the speed-up of clebsch over each reference.

``clebsch`` is the default path (the generated C kernel, see
``clebsch.o3._native``); ``clebsch-pt`` the PyTorch path used where no C
compiler is found (``CLEBSCH_NATIVE=0``).

Run: ``python benchmarks/o3.py``
"""

from __future__ import annotations

import os
import statistics
import time

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


def median_times(fns: dict, repeats: int = 21, warmup: int = 3) -> dict:
    """Median wall time of each function; the functions take turns so that load on a shared machine hits all alike."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


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


def bench_sh(n: int = 100_000, repeats: int = 21):
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

        fwd = median_times({name: (lambda f=f: f(x)) for name, f in cases.items()}, repeats)
        fb = median_times({name: fwd_bwd(f) for name, f in cases.items()}, repeats)
        rows += [(f"sh lmax={lmax}", name, fwd[name], fb[name]) for name in cases]
    return rows


def bench_wigner(n: int = 10_000, repeats: int = 21):
    g = torch.Generator().manual_seed(1)
    a, b, c = o3.rand_angles(n, generator=g)
    rows = []
    for l in (2, 6):
        fns = {"clebsch": lambda: o3.wigner_D(l, a, b, c)}
        if e3o3 is not None:
            fns["e3nn"] = lambda: e3o3.wigner_D(l, a, b, c)
        t = median_times(fns, repeats)
        rows += [(f"wigner_D l={l}", name, t[name], None) for name in fns]
    return rows


def main():
    torch.set_num_threads(2)
    torch.set_default_dtype(torch.float32)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, float32"
          f"{', e3nn ' + __import__('e3nn').__version__ if e3o3 else ', e3nn not installed'}"
          f"{', sphericart-torch' if sphericart_torch else ', sphericart-torch not installed'}")
    rows = bench_sh() + bench_wigner()
    ours = {(case, "fwd"): t for case, name, t, _ in rows if name == "clebsch"}
    ours.update({(case, "fb"): t for case, name, _, t in rows if name == "clebsch" and t is not None})
    print(f"{'case':<16}{'impl':<12}{'fwd ms':>9}{'fwd+bwd ms':>12}{'fwd speed-up':>14}{'fwd+bwd speed-up':>18}")
    for case, name, fwd, fb in rows:
        r_f = ours[(case, "fwd")] and fwd / ours[(case, "fwd")]
        r_b = fb / ours[(case, "fb")] if fb is not None else None
        print(f"{case:<16}{name:<12}{fwd * 1e3:>9.3f}{fb * 1e3 if fb is not None else float('nan'):>12.3f}"
              f"{r_f:>13.2f}x" + (f"{r_b:>17.2f}x" if r_b is not None else f"{'':>18}"))
    print("speed-up = time of the implementation in the row / time of clebsch (clebsch rows are 1.00x)")


if __name__ == "__main__":
    main()
