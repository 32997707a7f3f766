"""Neighbour-list speed: clebsch.graph.radius_graph against ASE (and matscipy) in one run.

Periodic water-like boxes (density 0.1 atoms/Å³, O-H 0.96 Å) of about 1,000,
10,000 and 100,000 atoms at cutoff 5 Å, then the end-to-end time to read and
preprocess an extxyz file into graphs (default ../shared/data/ethanol/train.xyz).
Prints times and ratios (reference time / clebsch time: > 1 means clebsch is faster).

    OMP_NUM_THREADS=1 python benchmarks/neighbors.py [--sizes 1000 10000 100000] [--data FILE]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _systems import water_box
from clebsch.data import AtomicDataset
from clebsch.graph import radius_graph

ASE_LIMIT_S = 60.0


def best_time(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_sizes(sizes, cutoff: float) -> None:
    try:
        from matscipy.neighbours import neighbour_list as matscipy_nl
    except ImportError:
        matscipy_nl = None
    from ase import Atoms
    from ase.neighborlist import neighbor_list as ase_nl

    header = f"{'atoms':>8} {'edges':>10} {'clebsch s':>10} {'ASE s':>9} {'ASE/clebsch':>12}"
    if matscipy_nl is not None:
        header += f" {'matscipy s':>11} {'matscipy/clebsch':>17}"
    print(f"radius graph, periodic water box, cutoff {cutoff} Å (best of repeats)")
    print(header)
    ase_per_atom, skipped = None, []
    for n in sizes:
        pos, cell, numbers = water_box(n)
        atoms = Atoms(numbers=numbers, positions=pos, cell=cell, pbc=True)
        repeats = 3 if n <= 20_000 else 1
        t_ours, (edge_index, _) = best_time(lambda: radius_graph(torch.from_numpy(pos), cutoff, cell, [True] * 3), repeats)
        line = f"{len(pos):>8} {edge_index.shape[1]:>10} {t_ours:>10.3f}"
        estimate = ase_per_atom * len(pos) if ase_per_atom is not None else 0.0
        if estimate > ASE_LIMIT_S:
            line += f" {'skipped':>9}"
            skipped.append(f"ASE at {len(pos)} atoms skipped: estimated {estimate:.0f} s > {ASE_LIMIT_S:.0f} s")
            t_ase = None
        else:
            t_ase, (i, _) = best_time(lambda: ase_nl("ij", atoms, cutoff), repeats)
            assert len(i) == edge_index.shape[1], "ASE and clebsch disagree on the number of edges"
            ase_per_atom = 1.2 * t_ase / len(pos)
        if t_ase is not None:
            line += f" {t_ase:>9.3f} {t_ase / t_ours:>12.1f}"
        if matscipy_nl is not None:
            t_ms, (i, _) = best_time(lambda: matscipy_nl("ij", atoms, cutoff), repeats)
            assert len(i) == edge_index.shape[1], "matscipy and clebsch disagree on the number of edges"
            line += f" {t_ms:>11.3f} {t_ms / t_ours:>17.1f}"
        print(line, flush=True)
    for note in skipped:
        print(note)


def bench_dataset(path: Path, cutoff: float) -> None:
    if not path.exists():
        print(f"end-to-end: {path} not found, skipped")
        return
    t0 = time.perf_counter()
    ds = AtomicDataset.from_file(path, cutoff)
    t_read = time.perf_counter() - t0
    atoms = sum(g.num_atoms for g in ds)
    print(f"end-to-end: read + graphs of {path.name}: {len(ds)} frames, {atoms} atoms, cutoff {cutoff} Å: "
          f"{t_read:.2f} s ({1e3 * t_read / len(ds):.2f} ms/frame)")
    with tempfile.TemporaryDirectory() as cache:
        AtomicDataset.from_file(path, cutoff, cache_dir=cache)
        t0 = time.perf_counter()
        AtomicDataset.from_file(path, cutoff, cache_dir=cache)
        t_cached = time.perf_counter() - t0
    print(f"end-to-end: second run from the on-disk cache: {t_cached:.2f} s ({t_read / t_cached:.1f}x faster)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--cutoff", type=float, default=5.0)
    root = Path(__file__).resolve().parent.parent
    parser.add_argument("--data", type=Path, default=root.parent / "shared" / "data" / "ethanol" / "train.xyz")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    bench_sizes(args.sizes, args.cutoff)
    bench_dataset(args.data, args.cutoff)


if __name__ == "__main__":
    main()
