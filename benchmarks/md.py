"""MD steps per second with ClebschCalculator, against MACE's ASE calculator at matched size.

Systems: the bundled molecule (first frame of examples/ethanol_xtb.xyz, 9 atoms)
and a periodic fcc copper supercell (7x7x7 cubic cells, 1,372 atoms). Models:
NequIP and MACE at a small size (16 channels, l_max 2, hidden irreps up to l=1
for MACE, cutoff 5 Å, untrained: speed does not depend on the weights), in
float32 and float64. Each run is velocity-Verlet NVE at 0.5 fs through ASE,
timed after a warm-up, so the figure includes the neighbour list (Verlet, skin
0.5 Å), graph building and the force/stress backward pass. The weights are
random, so the runs restart from the same positions and velocities every 50
steps (outside the timed part) before atoms collide.

Each model runs eager and compiled (``ClebschCalculator(compile=True)``: energy,
forces and stress captured as one graph and compiled by TorchInductor); the
compile time is printed on its own line (cold: empty Inductor cache; warm: a
second process reads the compiled graph from the on-disk cache), with the
number of graphs compiled, and the steps/s of several runs as their range.
``--breakdown`` prints where a step's time goes on the molecule (ASE,
neighbour list, graph building, model forward and backward, results).

The reference is ``mace-torch``'s ``MACECalculator`` on a ``mace.modules.MACE``
of the same hyperparameters, run in its own virtual environment (default
``~/.cache/clebsch-bench/mace``, or ``$CLEBSCH_MACE_VENV``; mace-torch needs e3nn 0.4) by re-running this file there
with ``--reference-worker``. Ratios are steps/s of ours over MACE's, for the
MACE rows. clebsch's calculator keeps the memory a step frees for the next one
(:func:`clebsch.keep_freed_memory`), which matters on the Cu box;
``--reference-keeps-memory`` gives the reference the same allocator settings.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/md.py [--quick] [--refvenv ~/.cache/clebsch-bench/mace] [--repeats 3]
        [--variants eager compiled] [--breakdown]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CUTOFF = 5.0
SIZE = {"channels": 16, "lmax": 2, "num_basis": 8, "polynomial_p": 6, "radial_hidden": 64}


def systems():
    """(name, atoms) of the two benchmark systems."""
    from ase.build import bulk
    from ase.io import read

    molecule = read(os.path.join(ROOT, "examples", "ethanol_xtb.xyz"), index=0)
    molecule.calc = None
    crystal = bulk("Cu", "fcc", a=3.61, cubic=True) * (7, 7, 7)
    crystal.rattle(0.02, seed=0)
    return [("ethanol (9 atoms)", molecule), (f"Cu fcc ({len(crystal)} atoms, PBC)", crystal)]


CHUNK = 50  # steps timed from the same starting point


def time_md(atoms, calc, steps: int, warmup: int) -> float:
    """Steps per second of velocity-Verlet NVE (0.5 fs) with ``calc``, after ``warmup`` steps."""
    from ase import units
    from ase.md.velocitydistribution import thermalize_momenta
    from ase.md.verlet import VelocityVerlet

    atoms = atoms.copy()
    atoms.calc = calc
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dyn.run(warmup)
    # untrained models drive atoms together within a few hundred steps: run in chunks from the same start
    positions, momenta = atoms.positions.copy(), atoms.get_momenta().copy()
    elapsed, done = 0.0, 0
    while done < steps:
        chunk = min(CHUNK, steps - done)
        atoms.positions = positions
        atoms.set_momenta(momenta)
        start = time.perf_counter()
        dyn.run(chunk)
        elapsed += time.perf_counter() - start
        done += chunk
    return steps / elapsed


def build(family: str):
    import torch

    from clebsch.models import build_model

    torch.manual_seed(0)
    config = {"name": family, "species": ["H", "C", "O", "Cu"], "cutoff": CUTOFF, "num_layers": 2, **SIZE,
              "outputs": ["energy", "forces", "stress"]}
    if family == "mace":
        config.update(hidden_lmax=1, correlation=3)
    return build_model(config)


def graphs_compiled() -> int:
    import torch

    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def calculator(family: str, dtype: str, atoms, compiled: bool):
    """The calculator, after its first call; with ``compiled``, also the seconds that call took."""
    from clebsch.calculators import ClebschCalculator

    calc = ClebschCalculator(build(family), dtype=dtype, compile=compiled)
    probe = atoms.copy()
    probe.calc = calc
    start = time.perf_counter()
    probe.get_forces()
    return calc, time.perf_counter() - start


def ours(family: str, dtype: str, atoms, steps: int, warmup: int, repeats: int = 1, compiled: bool = False):
    """Steps/s of ``repeats`` runs, and (compiled) a line on the compilation."""
    before = graphs_compiled()
    calc, first = calculator(family, dtype, atoms, compiled)
    note = None
    if compiled:
        if calc.compiled.failed:
            note = f"not compiled: {calc.compiled.failed}"
        else:
            note = f"first call {first:.1f} s (trace {calc.compiled.trace_seconds:.1f} s)"
    rates = [time_md(atoms, calc, steps, warmup) for _ in range(repeats)]
    if compiled and note and not calc.compiled.failed:
        note += f", {graphs_compiled() - before} graph(s) compiled in all"
    return rates, note


def breakdown(family: str, dtype: str, atoms, steps: int, compiled: bool) -> dict:
    """Milliseconds per MD step spent in each part, on ``atoms``."""
    import torch
    from ase import units
    from ase.md.verlet import VelocityVerlet

    calc, _ = calculator(family, dtype, atoms, compiled)
    spent = dict.fromkeys(["neighbour list", "graph building", "model", "results and checks"], 0.0)
    update, graph_of, model = calc.neighbors.update, calc.graph, calc.model
    compiled_fn = calc.compiled

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - start
        return wrapper

    calc.neighbors.update = timed("neighbour list", update)
    calc.graph = timed("graph building", graph_of)
    if compiled:
        calc.compiled = timed("model", compiled_fn)
    else:
        calc.model = timed("model", model)
    calculate = calc.calculate
    calc.calculate = timed("calculate", calculate)
    spent["calculate"] = 0.0

    run = atoms.copy()
    run.calc = calc
    dyn = VelocityVerlet(run, timestep=0.5 * units.fs)
    dyn.run(5)
    for key in spent:
        spent[key] = 0.0
    start = time.perf_counter()
    dyn.run(steps)
    total = time.perf_counter() - start
    ms = {k: 1e3 * v / steps for k, v in spent.items()}
    out = {"total": 1e3 * total / steps, "ASE (integrator, calculator bookkeeping)": 1e3 * total / steps - ms["calculate"]}
    out["neighbour list"] = ms["neighbour list"]
    out["graph building"] = ms["graph building"] - ms["neighbour list"]
    if compiled:
        out["model: forward + backward, one compiled graph"] = ms["model"]
    else:
        # split the model's time by timing the forward alone (with the autograd graph recorded) on one graph
        graph = graph_of(run)
        periodic = bool(run.pbc.all())

        def forward_only():  # the energy, with the autograd graph a backward would need recorded
            positions = graph.positions.detach().requires_grad_(True)
            return model(dataclasses.replace(graph, positions=positions), compute_forces=False, compute_stress=False)

        with torch.enable_grad():
            full = _per_call(lambda: model(graph, compute_forces=True, compute_stress=periodic))
            fwd = _per_call(forward_only)
        out["model: forward"] = ms["model"] * fwd / full
        out["model: backward (forces)"] = ms["model"] * (1 - fwd / full)
    out["results and checks"] = ms["calculate"] - ms["graph building"] - ms["model"]
    return out


def _per_call(fn, n: int = 200) -> float:
    for _ in range(10):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def reference_worker(dtype: str, steps_list, warmup_list) -> dict:
    """Runs inside the reference venv: MACE's own model and ASE calculator."""
    import torch
    from e3nn import o3
    from mace import modules
    from mace.calculators import MACECalculator

    torch.set_default_dtype(getattr(torch, dtype))
    torch.manual_seed(0)
    model = modules.MACE(
        r_max=CUTOFF, num_bessel=SIZE["num_basis"], num_polynomial_cutoff=SIZE["polynomial_p"], max_ell=SIZE["lmax"],
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        num_interactions=2, num_elements=4, hidden_irreps=o3.Irreps(f"{SIZE['channels']}x0e + {SIZE['channels']}x1o"),
        MLP_irreps=o3.Irreps("16x0e"), atomic_energies=np.zeros(4), avg_num_neighbors=10.0,
        atomic_numbers=[1, 6, 8, 29], correlation=3, gate=torch.nn.functional.silu,
        radial_MLP=[SIZE["radial_hidden"]] * 3,
    )
    calc = MACECalculator(models=model, device="cpu", default_dtype=dtype)
    out = {}
    for (name, atoms), steps, warmup in zip(systems(), steps_list, warmup_list):
        out[name] = time_md(atoms, calc, steps, warmup)
    return out


def reference(refvenv: str, dtype: str, steps_list, warmup_list, keep_memory: bool = False):
    python = os.path.join(refvenv, "bin", "python")
    if not os.path.exists(python):
        return None, f"no reference venv at {refvenv}"
    cmd = [python, os.path.abspath(__file__), "--reference-worker", dtype,
           "--steps", *map(str, steps_list), "--warmup", *map(str, warmup_list)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    if keep_memory:  # glibc's settings that clebsch.keep_freed_memory() makes, through the environment
        env.update(MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(2**62))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return None, "reference failed: " + proc.stderr.strip().splitlines()[-1]
    return json.loads(proc.stdout.strip().splitlines()[-1]), None


def _range(rates) -> str:
    lo, hi = min(rates), max(rates)
    return f"{lo:.1f}" if len(rates) == 1 else f"{lo:.1f}-{hi:.1f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    default_venv = os.environ.get("CLEBSCH_MACE_VENV",
                                  os.path.join(os.path.expanduser("~"), ".cache", "clebsch-bench", "mace"))
    parser.add_argument("--refvenv", default=default_venv, help="venv with mace-torch ('' to skip)")
    parser.add_argument("--families", nargs="+", default=["nequip", "mace"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--variants", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    parser.add_argument("--systems", nargs="+", type=int, default=[0, 1], help="0: the molecule, 1: the Cu box")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row; steps/s are given as their range")
    parser.add_argument("--breakdown", action="store_true", help="where a step goes on the molecule, then stop")
    parser.add_argument("--reference-keeps-memory", action="store_true",
                        help="run the reference with the allocator settings of clebsch.keep_freed_memory(), "
                             "which clebsch's calculator makes (through glibc's MALLOC_* environment variables)")
    parser.add_argument("--reference-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--steps", nargs=2, type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", nargs=2, type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    steps = args.steps or ([50, 3] if args.quick else [300, 10])
    warmup = args.warmup or [5, 1]
    if args.reference_worker:
        print(json.dumps(reference_worker(args.reference_worker, steps, warmup)))
        return

    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); steps timed: {steps}, warm-up {warmup}, "
          f"{args.repeats} run(s) per row")
    if args.breakdown:
        name, atoms = systems()[0]
        for family in args.families:
            for dtype in args.dtypes:
                for variant in args.variants:
                    parts = breakdown(family, dtype, atoms, steps[0], variant == "compiled")
                    total = parts.pop("total")
                    print(f"{name}, {family} {dtype} {variant}: {total:.2f} ms/step ({1e3 / total:.0f} steps/s)")
                    for part, ms in parts.items():
                        print(f"    {part:<48} {ms:7.3f} ms  {100 * ms / total:5.1f} %")
        return
    refs = {}
    if args.refvenv:
        for dtype in args.dtypes:
            refs[dtype], why = reference(args.refvenv, dtype, steps, warmup, args.reference_keeps_memory)
            if why:
                print(f"MACE reference ({dtype}): {why}")
    print(f"{'system':<28} {'model':<8} {'dtype':<8} {'variant':<9} {'steps/s':>13} {'MACE ref':>9} {'ratio':>6}")
    for index in args.systems:
        (name, atoms), n, w = systems()[index], steps[index], warmup[index]
        for family in args.families:
            for dtype in args.dtypes:
                for variant in args.variants:
                    rates, note = ours(family, dtype, atoms, n, w, args.repeats, variant == "compiled")
                    ref = (refs.get(dtype) or {}).get(name) if family == "mace" else None
                    ref_s = f"{ref:9.2f}" if ref else f"{'-':>9}"
                    ratio = f"{np.median(rates) / ref:6.2f}" if ref else f"{'-':>6}"
                    print(f"{name:<28} {family:<8} {dtype:<8} {variant:<9} {_range(rates):>13} {ref_s} {ratio}",
                          flush=True)
                    if note:
                        print(f"{'':<28} {'':<8} {'':<8} ({note})", flush=True)


if __name__ == "__main__":
    main()
