"""Training on periodic boxes of changing size, with and without kept freed memory: time and peak memory.

A training run on materials data sees a different structure, so different
tensor sizes, every step. Each variant runs in a fresh process: MACE (default
size, eager) trained for ``--steps`` steps of energy + forces loss on periodic
water-like boxes of 100 to 1,500 atoms drawn at random (the same boxes for
both), one structure a step; printed are the wall time and the process's peak
resident memory, with :func:`clebsch.keep_freed_memory` (as ``clebsch train``
runs) and with PyTorch's allocator as it is.

    OMP_NUM_THREADS=1 python benchmarks/memory.py [--steps 40] [--threads 1] [--family mace]
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


def worker(family: str, steps: int, threads: int, keep: bool) -> dict:
    import numpy as np
    import torch

    sys.path.insert(0, HERE)
    from _systems import water_box

    import clebsch
    from clebsch.graph import AtomicGraph
    from clebsch.models import build_model

    kept = clebsch.keep_freed_memory() if keep else False
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model({"name": family, "species": ["H", "O"], "cutoff": 5.0})
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    sizes = np.random.default_rng(0).integers(100, 1500, steps) // 3 * 3
    start = time.perf_counter()
    for i, n in enumerate(sizes):
        positions, cell, numbers = water_box(int(n), seed=i)
        graph = AtomicGraph.from_tensors(torch.as_tensor(positions, dtype=torch.float32), torch.as_tensor(numbers),
                                         5.0, cell=torch.as_tensor(cell, dtype=torch.float32), pbc=[True] * 3)
        graph.positions.requires_grad_(True)
        energy = model(graph)["energy"]
        forces = -torch.autograd.grad(energy.sum(), graph.positions, create_graph=True)[0]
        loss = energy.pow(2).mean() + forces.pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {"kept": kept, "seconds": time.perf_counter() - start, "atoms": [int(sizes.min()), int(sizes.max())],
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="mace")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--worker", choices=["keep", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.family, args.steps, args.threads, args.worker == "keep")))
        return 0
    rows = {}
    for variant in ("keep", "plain"):
        cmd = [sys.executable, __file__, "--worker", variant, "--family", args.family, "--steps", str(args.steps),
               "--threads", str(args.threads)]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode:
            print(f"{variant} failed:\n{res.stderr[-1500:]}", file=sys.stderr)
            return 1
        rows[variant] = json.loads(res.stdout.strip().splitlines()[-1])
    keep, plain = rows["keep"], rows["plain"]
    print(f"{args.family}, {args.steps} training steps on periodic boxes of {keep['atoms'][0]}-{keep['atoms'][1]} "
          f"atoms, {args.threads} thread(s)")
    print(f"{'allocator':<34}{'time s':>8}{'peak MiB':>10}")
    label = "freed memory kept" if keep["kept"] else "freed memory kept (unavailable here)"
    print(f"{label:<34}{keep['seconds']:>8.1f}{keep['peak_mib']:>10.0f}")
    print(f"{'PyTorch default':<34}{plain['seconds']:>8.1f}{plain['peak_mib']:>10.0f}")
    print(f"speed-up {plain['seconds'] / keep['seconds']:.2f}x, "
          f"peak memory ratio {keep['peak_mib'] / plain['peak_mib']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
