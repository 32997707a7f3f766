"""SCF iterations saved by a predicted Kohn-Sham matrix as PySCF's initial guess.

For each structure, PySCF runs the data's own level of theory (restricted
Kohn-Sham, PBE, def2-SVP, ``conv_tol`` 1e-9) three ways: from its default guess
(``minao``), from a superposition of atomic densities (``atom``), and from the
density matrix of the model's Hamiltonian (``H C = S C e`` with PySCF's own
overlap, the lowest orbitals doubly occupied). Prints the iterations of each and
the energy differences of the converged results (all three must reach the same
state).

Needs PySCF beside clebsch (``pip install pyscf``):

    python benchmarks/scf_guess.py runs/water-clusters/model.pt "examples/water_clusters.xyz.xz@180:211"
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch


def predicted_density_matrix(model, atoms, pair: str, onsite: str, overlap: np.ndarray) -> np.ndarray:
    from clebsch.basis import assemble_matrix
    from clebsch.data.targets import graph_from_atoms

    graph = graph_from_atoms(atoms, model.cutoff, keys={}, dtype=model.atomic_energies.dtype)
    with torch.enable_grad():
        out = model(graph)
    basis = model.targets[pair].basis
    z = atoms.numbers.tolist()
    h = assemble_matrix(basis, z, out[onsite].detach().double(), out[pair].detach().double(), graph.edge_index)
    h = basis.matrix_to_native(z, h).numpy()
    s_vals, s_vecs = np.linalg.eigh(overlap)
    x = s_vecs / np.sqrt(s_vals)
    _, c = np.linalg.eigh(x.T @ h @ x)
    c = x @ c
    occupied = (sum(z) - int(atoms.info.get("charge", 0))) // 2
    return 2.0 * c[:, :occupied] @ c[:, :occupied].T


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="packaged model with on-site and pair blocks of a Kohn-Sham matrix")
    parser.add_argument("data", help="structures (e.g. 'examples/water_clusters.xyz.xz@180:211')")
    parser.add_argument("--xc", default="pbe")
    parser.add_argument("--basis", default="def2-svp")
    parser.add_argument("--max", type=int, default=None, help="at most this many structures")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        from pyscf import dft, gto, lib
    except ImportError:
        print("benchmarks/scf_guess.py needs PySCF (pip install pyscf); skipped", file=sys.stderr)
        return 0
    from clebsch.data.io import read_structures
    from clebsch.models.package import load
    from clebsch.train.electronic import basis_targets

    lib.num_threads(args.threads)
    torch.set_num_threads(args.threads)
    model = load(args.model)
    _, matrices = basis_targets({n: model.targets[n] for n in model.outputs})
    if not matrices:
        print(f"{args.model} predicts no Kohn-Sham matrix (on-site and pair blocks of one basis)", file=sys.stderr)
        return 1
    onsite, pair = matrices[0]
    frames = read_structures(args.data)[: args.max]
    rows = []
    for k, atoms in enumerate(frames):
        mol = gto.M(atom=[(s, p) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)],
                    basis=args.basis, unit="Angstrom", verbose=0)
        runs = {}
        for guess in ("minao", "atom", "model"):
            mf = dft.RKS(mol, xc=args.xc)
            mf.conv_tol = 1e-9
            t = time.perf_counter()
            if guess == "model":
                dm0 = predicted_density_matrix(model, atoms, pair, onsite, mol.intor("int1e_ovlp"))
                energy = mf.kernel(dm0=dm0)
            else:
                mf.init_guess = guess
                energy = mf.kernel()
            runs[guess] = (int(mf.cycles), float(energy), time.perf_counter() - t, bool(mf.converged))
        rows.append((atoms.info.get("config_type", "Default"), runs))
        line = "  ".join(f"{g} {c:3d} it" for g, (c, *_rest) in runs.items())
        print(f"{k:3d} {rows[-1][0]:>10}  {line}  |dE(model-minao)| {abs(runs['model'][1] - runs['minao'][1]):.1e} Ha",
              flush=True)
    print()
    print(f"{'config_type':>12} {'n':>3} {'minao':>7} {'atom':>7} {'model':>7} {'saved vs minao':>15} "
          f"{'saved vs atom':>14}")
    groups = sorted({g for g, _ in rows}) + ["all"]
    for group in groups:
        sel = [r for g, r in rows if group in ("all", g)]
        mean = {guess: np.mean([r[guess][0] for r in sel]) for guess in ("minao", "atom", "model")}
        print(f"{group:>12} {len(sel):3d} {mean['minao']:7.1f} {mean['atom']:7.1f} {mean['model']:7.1f} "
              f"{100 * (1 - mean['model'] / mean['minao']):14.0f}% {100 * (1 - mean['model'] / mean['atom']):13.0f}%")
    unconverged = sum(not r[g][3] for _, r in rows for g in r)
    if unconverged:
        print(f"{unconverged} SCF runs did not converge", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
