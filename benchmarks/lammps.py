"""MD steps/s in LAMMPS (ML-IAP unified, 1 and 2 MPI ranks) vs the ASE calculator, same model.

    scripts/build_lammps.sh        # once
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lammps.py [--atoms 1372 10000] [--steps 20] [--family allegro]

Peak memory is the sum over ranks of each process's peak resident memory.

Copper fcc boxes (1,372 atoms = 7x7x7 cells; 10,000 atoms ~ 14x14x13); a 2-layer
NequIP (16 channels, lmax 1, cutoff 4.5 Å) in float64, or a strictly local Allegro
(``--family allegro``). Strong scaling: the same box on 1 and 2 ranks; weak
scaling: twice the atoms on 2 ranks.

A message-passing model of L layers needs, on each rank, the features of ghost
atoms up to L - 1 cutoffs beyond its domain: on one rank LAMMPS evaluates more
pairs than the ASE calculator on the same box (the ratio printed as "pairs"),
which a strictly local model (Allegro) avoids.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ase.build import bulk
from ase.io import write
from ase.md.verlet import VelocityVerlet
from ase import units

from clebsch.calculators import ClebschCalculator, write_lammps
from clebsch.models import build_model

CACHE = Path(os.environ.get("CLEBSCH_LAMMPS_CACHE", Path.home() / ".cache" / "clebsch" / "lammps"))
DRIVER = '''
import json, sys, time, lammps, lammps.mliap
spec = json.loads(sys.argv[1])
lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
lammps.mliap.activate_mliappy(lmp)
for c in spec["setup"]:
    lmp.command(c)
lmp.command("run 1")
t = time.perf_counter(); lmp.command(f"run {spec['steps']}"); t = time.perf_counter() - t
import resource
print(json.dumps({"rank": lmp.extract_setting("world_rank"), "steps_per_s": spec["steps"] / t,
                  "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}), flush=True)
'''


def box(n_atoms: int):
    import numpy as np

    reps = max(1, round((n_atoms / 4) ** (1 / 3)))
    shape = [reps, reps, max(1, round(n_atoms / (4 * reps * reps)))]
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * shape
    atoms.rattle(0.02, seed=0)
    return atoms


def lammps_rate(lmp_file, atoms, ranks, steps, tmp):
    data = Path(tmp) / f"box{len(atoms)}.data"
    write(data, atoms, format="lammps-data", masses=True, specorder=["Cu"])
    setup = ["units metal", "atom_style atomic", "newton on", f"read_data {data}", "neighbor 1.0 bin",
             f"include {lmp_file}", "velocity all create 300 1", "fix nve all nve", "timestep 0.001"]
    driver = Path(tmp) / "driver.py"
    driver.write_text(DRIVER)
    cmd = [str(CACHE / "tools/bin/mpiexec"), "-n", str(ranks), sys.executable, str(driver),
           json.dumps({"setup": setup, "steps": steps})]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if out.returncode:
        raise RuntimeError(f"LAMMPS on {ranks} rank(s), {len(atoms)} atoms failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    # one JSON object per rank; ranks print at once, so objects may share a line
    ranks_out = [json.loads(m) for m in re.findall(r"\{[^{}]*\}", out.stdout)]
    rate = next(r["steps_per_s"] for r in ranks_out if r["rank"] == 0)
    return rate, sum(r["maxrss_kib"] for r in ranks_out) / 2**20


def ase_rate(model, atoms, steps):
    atoms = atoms.copy()
    atoms.calc = ClebschCalculator(model)
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    dyn.run(1)
    t = time.perf_counter()
    dyn.run(steps)
    return steps / (time.perf_counter() - t)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--atoms", type=int, nargs="+", default=[1372, 10000])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--family", choices=["nequip", "allegro"], default="nequip")
    args = parser.parse_args()
    sizes = {"nequip": {"channels": 16, "lmax": 1}, "allegro": {"num_tensor_features": 16, "lmax": 1}}[args.family]
    model = build_model({"name": args.family, "species": ["Cu"], "cutoff": 4.5, "num_layers": 2,
                         **sizes}).double().eval()
    print(f"{args.family} {sizes}, 2 layers, cutoff 4.5 Å, float64, {args.steps} steps per rate")
    with tempfile.TemporaryDirectory() as tmp:
        _, lmp_file = write_lammps(model, Path(tmp) / "cu")
        print("steps/s (peak memory of all ranks together, GiB)")
        print("atoms   ASE steps/s   LAMMPS 1 rank          LAMMPS 2 ranks         2x atoms on 2 ranks")
        for n in args.atoms:
            atoms = box(n)
            a = ase_rate(model, atoms, args.steps)
            one, m1 = lammps_rate(lmp_file, atoms, 1, args.steps, tmp)
            two, m2 = lammps_rate(lmp_file, atoms, 2, args.steps, tmp)
            weak, mw = lammps_rate(lmp_file, box(2 * n), 2, args.steps, tmp)
            print(f"{len(atoms):6d}  {a:11.3f}  {one:7.3f} ({one / a:.2f}x, {m1:4.1f})  "
                  f"{two:7.3f} ({two / one:.2f}x, {m2:4.1f})  {weak:7.3f} ({mw:4.1f})", flush=True)


if __name__ == "__main__":
    main()
