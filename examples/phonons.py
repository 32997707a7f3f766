"""Phonons of fcc copper and vibrations of ethanol from a model's exact Hessian.

    OMP_NUM_THREADS=2 python examples/phonons.py --out runs/phonons

1. Copper. A small NequIP is trained for ``--train-time`` seconds on the bundled
   EMT copper frames (``examples/cu_emt.xyz``), or read with ``--cu-model``. The
   lattice constant is relaxed with the model, phonopy's force constants of a
   4x4x4 supercell of the primitive cell are filled from the exact Hessian
   (:func:`clebsch.calculators.phonopy_force_constants`), and the band structure
   and density of states are drawn beside EMT's own (the potential the data came
   from, through phonopy's finite displacements): ``phonons_cu.png``.
2. Ethanol. A small NequIP is trained on ``examples/ethanol_xtb.xyz`` (or read
   with ``--molecule-model``); the molecule is relaxed with it and its harmonic
   frequencies from the exact Hessian are printed beside those of
   ``ase.vibrations.Vibrations`` (central finite differences of the model's
   forces), with the time each took: ``ethanol_frequencies.csv``.

Needs phonopy: ``pip install 'clebsch[phonons]'``. About four minutes on two cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def train_model(data: Path, run_dir: Path, seconds: float, cutoff: float, stress: bool) -> str:
    """A small NequIP trained for ``seconds`` on ``data``; returns the packaged model's path."""
    from clebsch.train.trainer import train

    keys = {"energy": "energy", "forces": "forces", **({"stress": "stress"} if stress else {})}
    config = {
        "run_dir": str(run_dir),
        "seed": 0,
        "device": "cpu",
        "dtype": "float32",
        "model": {"name": "nequip", "cutoff": cutoff, "num_layers": 2, "channels": 16, "lmax": 1, "num_basis": 8},
        "data": {"train": str(data), "valid_fraction": 0.1, "keys": keys, "batch_size": 2 if stress else 5},
        "loss": {"weights": {"energy": 10.0, "forces": 100.0, **({"stress": 1000.0} if stress else {})}},
        "optimizer": {"lr": 0.01, "amsgrad": True},
        "training": {"max_epochs": 1000, "max_time": seconds, "ema_decay": 0.99, "progress": False,
                     "plots": False},
    }
    result = train(config, log=lambda *_: None)
    print(f"  trained {result['epochs']} epochs in {seconds:.0f} s -> {result['model_path']}")
    return result["model_path"]


def relaxed_fcc(calc, a0: float = 3.6):
    """The primitive fcc Cu cell with its lattice constant relaxed for ``calc``."""
    from ase.build import bulk
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    atoms = bulk("Cu", "fcc", a=a0)
    atoms.calc = calc
    BFGS(FrechetCellFilter(atoms), logfile=None).run(fmax=1e-5, steps=200)
    atoms.calc = None
    return atoms, float(np.sqrt(2.0) * np.linalg.norm(atoms.cell[0]))


def copper(model_path: str, out: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ase.calculators.emt import EMT

    from clebsch.calculators import ClebschCalculator, phonopy_finite_displacements, phonopy_force_constants, \
        phonopy_from_atoms

    calc = ClebschCalculator(model_path)
    unit_model, a_model = relaxed_fcc(calc)
    unit_emt, a_emt = relaxed_fcc(EMT())
    print(f"  lattice constant: model {a_model:.4f} Å, EMT {a_emt:.4f} Å")

    supercell = np.diag([4, 4, 4])
    phonon = phonopy_from_atoms(unit_model, supercell, primitive_matrix=None)
    start = time.perf_counter()
    phonopy_force_constants(calc, phonon)
    exact_s = time.perf_counter() - start
    check = phonopy_from_atoms(unit_model, supercell, primitive_matrix=None)
    start = time.perf_counter()
    phonopy_finite_displacements(calc, check, compact=True)
    fd_s = time.perf_counter() - start
    fc_difference = float(np.abs(phonon.force_constants - check.force_constants).max())
    reference = phonopy_from_atoms(unit_emt, supercell, primitive_matrix=None)
    # EMT's own phonons: phonopy's finite displacements with ASE's EMT calculator
    reference.generate_displacements(distance=0.01, is_plusminus=True)
    from ase import Atoms

    forces = []
    for cell in reference.supercells_with_displacements:
        atoms = Atoms(list(cell.symbols), cell=cell.cell, scaled_positions=cell.scaled_positions, pbc=True)
        atoms.calc = EMT()
        forces.append(atoms.get_forces())
    reference.forces = np.array(forces)
    reference.produce_force_constants(show_drift=False)
    print(f"  force constants of the {len(phonon.supercell)}-atom supercell: exact Hessian rows of the primitive "
          f"cell {exact_s:.2f} s, phonopy's finite displacements through the calculator {fd_s:.2f} s; largest "
          f"difference {fc_difference:.2e} eV/Å²")

    path = unit_model.cell.bandpath("GXWKGLUWLK", npoints=200)
    x, ticks, labels = path.get_linear_kpoint_axis()
    bands = {}
    for name, ph in (("model", phonon), ("EMT", reference)):
        ph.run_qpoints(path.kpts)
        ph.run_mesh([24, 24, 24], is_gamma_center=True)
        ph.run_total_dos()
        bands[name] = (ph.qpoints.frequencies, ph.total_dos.frequency_points, ph.total_dos.dos)

    fig, (ax, ax_dos) = plt.subplots(1, 2, figsize=(8, 4), sharey=True, gridspec_kw={"width_ratios": [3, 1]})
    for name, color, style in (("EMT", "0.55", "--"), ("model", "C0", "-")):
        freq, dos_f, dos = bands[name]
        ax.plot(x, freq, color=color, ls=style, lw=1.3)
        ax.plot([], [], color=color, ls=style, label=f"{name} (a = {a_model if name == 'model' else a_emt:.3f} Å)")
        ax_dos.plot(dos / dos.max(), dos_f, color=color, ls=style, lw=1.3)
    ax.set_xticks(ticks, ["Γ" if s == "G" else s for s in labels])
    for t in ticks:
        ax.axvline(t, color="0.85", lw=0.8, zorder=0)
    ax.axhline(0, color="0.7", lw=0.8)
    ax.set_xlim(x[0], x[-1])
    ax.set_ylim(bottom=-0.3)
    ax.set_ylabel("frequency (THz)")
    ax.set_title("fcc Cu: a NequIP fitted to EMT frames (exact force constants) and EMT", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax_dos.set_xlabel("DOS (arb.)")
    ax_dos.set_xticks([])
    fig.tight_layout()
    png = out / "phonons_cu.png"
    fig.savefig(png, dpi=130)
    plt.close(fig)

    at = {}
    for label, q in (("X", [0.5, 0.0, 0.5]), ("L", [0.5, 0.5, 0.5])):
        values = []
        for ph in (phonon, reference):
            ph.run_qpoints([q])
            values.append(np.sort(ph.qpoints.frequencies[0]).tolist())
        at[label] = {"model": values[0], "EMT": values[1]}
        print(f"  {label}: model {np.round(values[0], 2).tolist()} THz, EMT {np.round(values[1], 2).tolist()} THz")
    print(f"  wrote {png}")
    return {"a_model": a_model, "a_emt": a_emt, "exact_s": exact_s, "finite_displacements_s": fd_s,
            "fc_max_difference": fc_difference, "frequencies_THz": at, "figure": str(png)}


def ethanol(model_path: str, out: Path) -> dict:
    import tempfile

    from ase.build import molecule
    from ase.optimize import BFGS
    from ase.vibrations import Vibrations

    from clebsch.calculators import ClebschCalculator, normal_modes, vibrational_frequencies

    calc = ClebschCalculator(model_path, skin=0.0)
    atoms = molecule("CH3CH2OH")
    atoms.calc = calc
    optimizer = BFGS(atoms, logfile=None)
    converged = optimizer.run(fmax=1e-4, steps=500)
    fmax = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
    print(f"  relaxed with the model in {optimizer.nsteps} BFGS steps (largest force {fmax:.1e} eV/Å"
          f"{'' if converged else ', not converged'})")
    start = time.perf_counter()
    modes = vibrational_frequencies(calc, atoms)
    exact_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        vib = Vibrations(atoms, name=str(Path(tmp) / "vib"), delta=0.01, nfree=2)
        start = time.perf_counter()
        vib.run()
        fd_s = time.perf_counter() - start
        fd = normal_modes(atoms, vib.get_vibrations().get_hessian_2d())
    difference = np.abs(modes.frequencies_cm - fd.frequencies_cm)
    print(modes.summary())
    print(f"  ethanol, {len(modes.frequencies_cm)} modes: exact Hessian {1e3 * exact_s:.0f} ms, ase.vibrations "
          f"(delta 0.01 Å, {6 * len(atoms) + 1} force calls) {1e3 * fd_s:.0f} ms; largest difference "
          f"{difference.max():.2f} cm^-1 (median {np.median(difference):.2f}); rigid motions before projection: "
          f"largest |frequency| {np.abs(modes.external_cm).max():.2f} cm^-1")
    table = out / "ethanol_frequencies.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["mode", "exact_cm-1", "exact_meV", "ase_finite_differences_cm-1"])
        for k, (cm, mev, ref) in enumerate(zip(modes.frequencies_cm, modes.energies_meV, fd.frequencies_cm)):
            writer.writerow([k, f"{cm:.2f}", f"{mev:.3f}", f"{ref:.2f}"])
    print(f"  wrote {table}")
    return {"exact_s": exact_s, "finite_differences_s": fd_s, "max_difference_cm": float(difference.max()),
            "frequencies_cm": modes.frequencies_cm.tolist(), "external_cm": modes.external_cm.tolist()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/phonons", help="folder for the figure, tables and trained models")
    parser.add_argument("--cu-model", help="a packaged model of copper (skips its training)")
    parser.add_argument("--molecule-model", help="a packaged model of ethanol (skips its training)")
    parser.add_argument("--train-time", type=float, default=90.0, help="seconds of training per model")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    print("copper")
    cu_model = args.cu_model or train_model(HERE / "cu_emt.xyz", out / "cu-run", args.train_time, 4.2, True)
    summary = {"copper": copper(cu_model, out)}
    print("ethanol")
    molecule_model = args.molecule_model or train_model(HERE / "ethanol_xtb.xyz", out / "ethanol-run",
                                                        args.train_time, 4.0, False)
    summary["ethanol"] = ethanol(molecule_model, out)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
