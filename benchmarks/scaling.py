"""Inference cost per atom from 100 to 20,000 atoms: time and peak memory, Allegro and MACE (and others).

Periodic water boxes at liquid density (``_systems.water_box``: molecules on a
jittered lattice, random orientations), the families' default sizes, cutoff
5 Å, float32, untrained weights (cost does not depend on them). One step is
energy + forces (the backward pass included) on a graph built beforehand; the
graph's build time is printed on its own. Each (family, size) runs in a fresh
process, so that its peak memory is its own: the figure is the rise of the
process's peak resident memory during the first step and the timed ones over its peak before them
(model and graph already built), divided by the atoms.

    OMP_NUM_THREADS=2 python benchmarks/scaling.py [--families allegro mace] [--sizes 100 300 1000 3000 10000 20000]
        [--repeats 5] [--threads 2]

The worker calls :func:`clebsch.keep_freed_memory` as the calculator does
(``--free-memory`` leaves glibc's allocator as it is: each step then faults
its gigabytes back in, which the ``kernel s`` column, the step's system CPU
time, shows). Linear cost shows as a flat time per atom once the box is large enough for the
per-step overhead (operator dispatch, about a millisecond) to vanish; the last
column is the time per atom relative to the largest box.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CUTOFF = 5.0


def worker(family: str, n_atoms: int, repeats: int, threads: int, compiled: bool = False, keep: bool = True) -> dict:
    import numpy as np
    import torch

    import clebsch

    if keep:  # as the calculator, the CLI and LAMMPS do: the next step reuses the memory this one freed
        clebsch.keep_freed_memory()

    sys.path.insert(0, HERE)
    from _systems import water_box

    from clebsch.graph import AtomicGraph
    from clebsch.models import build_model

    torch.set_num_threads(threads)
    positions, cell, numbers = water_box(n_atoms, seed=0)
    model = build_model({"name": family, "species": ["H", "O"], "cutoff": CUTOFF}).float().eval()
    t = time.perf_counter()
    graph = AtomicGraph.from_tensors(torch.as_tensor(positions, dtype=torch.float32), torch.as_tensor(numbers),
                                     CUTOFF, cell=torch.as_tensor(cell, dtype=torch.float32), pbc=[True] * 3)
    build = time.perf_counter() - t
    weights = sum(p.numel() for p in model.parameters())
    step = model
    first_s = None
    if compiled:  # energy, forces as one captured graph compiled by TorchInductor (ClebschCalculator(compile=True))
        from clebsch.calculators._compiled import CompiledPotential

        captured = CompiledPotential(model)
        small = AtomicGraph.from_tensors(torch.as_tensor(positions[:24], dtype=torch.float32),
                                         torch.as_tensor(numbers[:24]), CUTOFF,
                                         cell=torch.as_tensor(cell, dtype=torch.float32), pbc=[True] * 3)
        t = time.perf_counter()
        if captured(small) is None:  # compiled on a small box, so that the peak below is the step's own
            raise SystemExit(f"compile failed: {captured.failed}")
        first_s = time.perf_counter() - t

        def step(g):
            return captured(g)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(2):  # warm-up: the kept allocator settles within the first two steps
        out = step(graph)
    assert torch.isfinite(out["forces"]).all()
    times, kernel = [], []
    for _ in range(repeats):
        r = resource.getrusage(resource.RUSAGE_SELF)
        t = time.perf_counter()
        out = step(graph)
        out["forces"].sum().item()
        times.append(time.perf_counter() - t)
        kernel.append(resource.getrusage(resource.RUSAGE_SELF).ru_stime - r.ru_stime)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"family": family, "atoms": int(len(numbers)), "edges": int(graph.edge_index.shape[1]),
            "weights": weights, "median_s": float(np.median(times)), "min_s": float(min(times)),
            "graph_s": build, "kernel_s": float(np.median(kernel)), "peak_rise_kib": int(after - before),
            "peak_kib": int(after), "compile_s": first_s}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["allegro", "mace"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000, 3000, 10000, 20000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument("--compile", action="store_true",
                        help="time the compiled inference path (ClebschCalculator(compile=True)) instead of eager")
    parser.add_argument("--free-memory", action="store_true",
                        help="leave glibc's allocator as it is (large blocks unmapped when freed and faulted back in "
                             "by the next step) instead of keep_freed_memory()")
    parser.add_argument("--worker", nargs=2, metavar=("FAMILY", "ATOMS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.repeats, args.threads, args.compile,
                                not args.free_memory)))
        return 0
    import torch

    print(f"torch {torch.__version__}, {args.threads} threads, float32, cutoff {CUTOFF} Å, water boxes, "
          f"median of {args.repeats} energy+forces steps"
          + (", compiled (TorchInductor)" if args.compile else ", eager")
          + (", freed memory unmapped (glibc default)" if args.free_memory else ", freed memory kept for reuse"))
    for family in args.families:
        rows = []
        for n in args.sizes:
            cmd = [sys.executable, __file__, "--worker", family, str(n), "--repeats", str(args.repeats),
                   "--threads", str(args.threads)] + (["--compile"] if args.compile else []) + (
                   ["--free-memory"] if args.free_memory else [])
            res = subprocess.run(cmd, capture_output=True, text=True,
                                 env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
            if res.returncode:
                print(f"{family} {n} atoms failed:\n{res.stderr[-1500:]}", file=sys.stderr)
                continue
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        if not rows:
            continue
        last = rows[-1]["median_s"] / rows[-1]["atoms"]
        print(f"\n{family} ({rows[0]['weights']:,} weights)"
              + (f"; first compiled call {rows[0]['compile_s']:.0f} s" if rows[0].get("compile_s") else ""))
        print(f"{'atoms':>7} {'edges':>9} {'step ms':>9} {'us/atom':>8} {'vs largest':>10} {'graph ms':>9} "
              f"{'peak rise MiB':>13} {'KiB/atom':>8} {'kernel s':>8}")
        for r in rows:
            per = r["median_s"] / r["atoms"]
            print(f"{r['atoms']:7d} {r['edges']:9d} {1e3 * r['median_s']:9.1f} {1e6 * per:8.1f} {per / last:10.2f} "
                  f"{1e3 * r['graph_s']:9.1f} {r['peak_rise_kib'] / 1024:13.1f} {r['peak_rise_kib'] / r['atoms']:8.1f}"
                  f" {r['kernel_s']:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
