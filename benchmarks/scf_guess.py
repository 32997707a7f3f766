"""SCF iterations saved by a model's prediction as PySCF's initial guess.

For each structure, PySCF runs the data's own level of theory (restricted
Kohn-Sham, PBE, def2-SVP, ``conv_tol`` 1e-9) from its default guess
(``minao``), from a superposition of atomic densities (``atom``), and from each
prediction the model makes (``clebsch.basis.pyscf.initial_guess``):
``hamiltonian``, the density matrix of the predicted Kohn-Sham matrix
(``H C = S C e`` with PySCF's own overlap, the lowest orbitals doubly occupied,
the combinations of functions of overlap eigenvalue below ``--overlap-cutoff``
dropped),
and ``density``, that of the Kohn-Sham matrix the predicted density defines
(``T + V_nuc + J[rho] + V_xc[rho]``). With ``--reference KEY`` it also starts
from the Kohn-Sham matrix of the reference density stored under ``KEY``
(``reference``): the best a density guess can do, whatever the model. With
``--reference-fock KEY`` it starts from the density matrix of the converged
Kohn-Sham matrix stored under ``KEY`` (``reference_fock``): the best a matrix
guess can do. Prints the iterations of each, the energy differences of the
converged results (all must reach the same state), and the mean wall time of
each SCF (for the model's guesses, the prediction included).

Needs PySCF beside clebsch (``pip install pyscf``)::

    python benchmarks/scf_guess.py runs/water-clusters/model.pt "examples/water_clusters.xyz.xz@180:211" \
        --reference density_coefficients

With ``--error-scales 1,0.3,0.1``, it also starts from the reference plus each
fraction of the prediction's error (``density x0.1``: the reference density
coefficients plus a tenth of the predicted ones' error; ``hamiltonian x0.1``:
the same for the Kohn-Sham matrix, every combination of functions kept unless
``--overlap-cutoff`` is given): how much more accurate a prediction must be
for a given saving, along the direction of the model's own error. Needs
``--reference`` (density) and/or ``--reference-fock`` (matrix).

The density may come from another model (``--density-model``); a model with a
density alone needs the AO basis the SCF runs in
(``--ao-basis examples/water_clusters.basis.json:ao``).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="packaged model with a density target and/or a Kohn-Sham matrix (or a "
                                      "committee file: the members' mean)")
    parser.add_argument("data", help="structures (e.g. 'examples/water_clusters.xyz.xz@180:211')")
    parser.add_argument("--density-model", metavar="MODEL",
                        help="a packaged model (or committee file) whose density is used instead of the first model's")
    parser.add_argument("--ao-basis", metavar="FILE:KEY",
                        help="the AO basis of the SCF where no model predicts a Kohn-Sham matrix")
    parser.add_argument("--xc", default="pbe")
    parser.add_argument("--reference", metavar="KEY",
                        help="per-atom reference density coefficients in the data (PySCF order, e.g. "
                             "density_coefficients): adds a guess from the reference density")
    parser.add_argument("--reference-fock", metavar="KEY",
                        help="the converged Kohn-Sham matrix in the data (n_ao x n_ao in PySCF's AO order, e.g. "
                             "fock): adds a guess from it")
    parser.add_argument("--overlap-cutoff", type=float, default=None,
                        help="the predicted matrix's guess drops the combinations of functions whose overlap eigenvalue "
                             "is below this (default: "
                             "the one the model was trained with, else clebsch.basis.pyscf.PREDICTED_OVERLAP_CUTOFF; 0 keeps "
                             "every combination)")
    parser.add_argument("--error-scales", metavar="T1,T2,...",
                        help="also start from the reference plus these fractions of the prediction's error (needs "
                             "--reference for the density, --reference-fock for the Kohn-Sham matrix)")
    parser.add_argument("--max", type=int, default=None, help="at most this many structures")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.overlap_cutoff is not None and not args.overlap_cutoff >= 0:
        parser.error(f"--overlap-cutoff must be >= 0, got {args.overlap_cutoff}")
    scales = []
    if args.error_scales:
        try:
            scales = [float(t) for t in args.error_scales.split(",")]
        except ValueError:
            parser.error(f"--error-scales takes numbers separated by commas, got {args.error_scales!r}")
        if not args.reference and not args.reference_fock:
            parser.error("--error-scales needs --reference (density) and/or --reference-fock (Kohn-Sham matrix)")
    try:
        from pyscf import dft, lib
    except ImportError:
        print("benchmarks/scf_guess.py needs PySCF (pip install pyscf); skipped", file=sys.stderr)
        return 0
    from clebsch.basis.pyscf import (aux_mole, density_matrix, fock_from_density, initial_guess, mole,
                                     native_coefficients, prediction)
    from clebsch.data.io import read_structures
    from clebsch.uncertainty import load_model as load  # a packaged model, or a committee file's mean
    from clebsch.train.electronic import basis_targets

    lib.num_threads(args.threads)
    torch.set_num_threads(args.threads)
    def predicted(m):  # (density targets, (on-site, pair) matrix targets) of a packaged model
        return basis_targets({n: m.targets[n] for n in m.outputs})

    model = load(args.model)
    density_model = load(args.density_model) if args.density_model else model
    densities, _ = predicted(density_model)
    _, matrices = predicted(model)
    if not densities and args.density_model:
        print(f"{args.density_model} predicts no density (a per-atom target with a basis)", file=sys.stderr)
        return 1
    aux = density_model.targets[densities[0]].basis if densities else None
    density_model = density_model if densities else None
    matrix_model = model if matrices else None
    if matrices:
        ao = model.targets[matrices[0][1]].basis
    elif args.ao_basis:
        from clebsch.basis import GaussianBasis

        file, _, key = args.ao_basis.rpartition(":") if ":" in args.ao_basis else (args.ao_basis, "", "")
        try:
            ao = GaussianBasis.from_file(file, key or None)
        except (OSError, ValueError) as err:
            print(f"--ao-basis {args.ao_basis}: {err}", file=sys.stderr)
            return 1
    else:
        print("no model predicts a Kohn-Sham matrix (on-site and pair blocks of one basis): give the SCF's AO "
              "basis with --ao-basis FILE:KEY", file=sys.stderr)
        return 1
    guesses = ["minao", "atom"] + (["hamiltonian"] if matrix_model else []) + (["density"] if density_model else [])
    if args.reference:
        if density_model is None:
            print("--reference needs a model with a density target (its auxiliary basis)", file=sys.stderr)
            return 1
        guesses.append("reference")
    if args.reference_fock:
        guesses.append("reference_fock")
    scaled = [("density", t) for t in scales if args.reference and density_model is not None] + \
             [("hamiltonian", t) for t in scales if args.reference_fock and matrix_model is not None]
    if scales and not scaled:
        print("--error-scales: no prediction has its reference here (a density model with --reference, or a "
              "Kohn-Sham matrix model with --reference-fock)", file=sys.stderr)
        return 1
    guesses += [f"{what} x{t:g}" for what, t in scaled]
    frames = read_structures(args.data)[: args.max]
    rows = []
    def reference_coefficients(k, atoms):
        if args.reference not in atoms.arrays:
            raise SystemExit(f"{args.data}, frame {k}: no per-atom key {args.reference!r}; it has "
                             f"{sorted(atoms.arrays)}")
        return native_coefficients(aux, atoms.numbers, aux.native_to_union(atoms.numbers, atoms.arrays[args.reference]))

    def reference_fock(k, atoms, nao):
        if args.reference_fock not in atoms.info:
            raise SystemExit(f"{args.data}, frame {k}: no key {args.reference_fock!r}; it has {sorted(atoms.info)}")
        try:
            fock = np.asarray(atoms.info[args.reference_fock], dtype=np.float64)
        except (TypeError, ValueError):
            raise SystemExit(f"{args.data}, frame {k}, key {args.reference_fock!r}: not a list of numbers "
                             f"({type(atoms.info[args.reference_fock]).__name__})") from None
        if fock.size != nao ** 2:
            raise SystemExit(f"{args.data}, frame {k}, key {args.reference_fock!r}: {fock.size} numbers, "
                             f"the AO basis has {nao} functions ({nao ** 2} numbers)")
        return fock.reshape(nao, nao)

    for k, atoms in enumerate(frames):
        mol = mole(atoms, ao)
        runs = {}
        predicted = {what: prediction(density_model if what == "density" else matrix_model, atoms, mol, what)
                     for what in {w for w, _ in scaled}}
        for guess in guesses:
            mf = dft.RKS(mol, xc=args.xc)
            mf.conv_tol = 1e-9
            t = time.perf_counter()
            if guess in ("hamiltonian", "density"):
                source = matrix_model if guess == "hamiltonian" else density_model
                energy = mf.kernel(dm0=initial_guess(source, atoms, mol, source=guess, xc=args.xc,
                                                     overlap_cutoff=args.overlap_cutoff if guess == "hamiltonian"
                                                     else None))
            elif guess == "reference":
                fock = fock_from_density(mol, aux_mole(mol, aux), reference_coefficients(k, atoms), args.xc)
                energy = mf.kernel(dm0=density_matrix(fock, mol.intor_symmetric("int1e_ovlp"), mol.nelectron))
            elif guess == "reference_fock":
                energy = mf.kernel(dm0=density_matrix(reference_fock(k, atoms, mol.nao),
                                                      mol.intor_symmetric("int1e_ovlp"), mol.nelectron))
            elif guess.startswith("density x"):
                ref = reference_coefficients(k, atoms)
                c = ref + float(guess.split("x")[-1]) * (predicted["density"] - ref)
                fock = fock_from_density(mol, aux_mole(mol, aux), c, args.xc)
                energy = mf.kernel(dm0=density_matrix(fock, mol.intor_symmetric("int1e_ovlp"), mol.nelectron))
            elif guess.startswith("hamiltonian x"):
                ref = reference_fock(k, atoms, mol.nao)
                fock = ref + float(guess.split("x")[-1]) * (predicted["hamiltonian"] - ref)
                energy = mf.kernel(dm0=density_matrix(fock, mol.intor_symmetric("int1e_ovlp"), mol.nelectron,
                                                      args.overlap_cutoff or 0.0))
            else:
                mf.init_guess = guess
                energy = mf.kernel()
            runs[guess] = (int(mf.cycles), float(energy), time.perf_counter() - t, bool(mf.converged))
        rows.append((atoms.info.get("config_type", "Default"), runs))
        line = "  ".join(f"{g} {c:3d} it" for g, (c, *_rest) in runs.items())
        spread = max(abs(r[1] - runs["minao"][1]) for r in runs.values())
        print(f"{k:3d} {rows[-1][0]:>11}  {line}  max |dE| {spread:.1e} Ha", flush=True)
    print()
    print(f"mean SCF iterations ({args.xc}, conv_tol 1e-9); saved: 1 - guess / minao")
    print(f"{'config_type':>12} {'n':>3} " + " ".join(f"{g:>11}" for g in guesses) + "  "
          + " ".join(f"{'saved ' + g:>17}" for g in guesses[2:]))
    for group in sorted({g for g, _ in rows}) + ["all"]:
        sel = [r for g, r in rows if group in ("all", g)]
        mean = {guess: np.mean([r[guess][0] for r in sel]) for guess in guesses}
        print(f"{group:>12} {len(sel):3d} " + " ".join(f"{mean[g]:11.1f}" for g in guesses) + "  "
              + " ".join(f"{100 * (1 - mean[g] / mean['minao']):16.0f}%" for g in guesses[2:]))
    print(f"mean wall time per SCF, s ({args.threads} thread{'s' * (args.threads > 1)})")
    for group in sorted({g for g, _ in rows}) + ["all"]:
        sel = [r for g, r in rows if group in ("all", g)]
        print(f"{group:>12} {len(sel):3d} " + " ".join(f"{np.mean([r[g][2] for r in sel]):11.2f}" for g in guesses))
    unconverged = sum(not r[g][3] for _, r in rows for g in r)
    if unconverged:
        print(f"{unconverged} SCF runs did not converge", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
