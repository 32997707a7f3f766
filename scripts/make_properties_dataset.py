"""Generate ``examples/molecules_pyscf.xyz``: small molecules with many quantum-chemical targets.

Rattled and randomly rotated conformers of small closed-shell H/C/N/O molecules
(from ``ase.build.molecule``), each computed with PySCF at one level of theory
(default RHF/def2-SVP). Per structure the extended XYZ file holds:

========================  ==========  ===============================================
key                       place       content
========================  ==========  ===============================================
``energy``                info        total energy, eV
``forces``                arrays      -dE/dR (analytic gradient), eV/Å, [N, 3]
``dipole``                info        electric dipole moment, e·Å, [3]
``polarizability``        info        static dipole polarizability, Å³, 9 numbers (3x3 row-major)
``shielding``             arrays      GIAO NMR shielding tensor, ppm, [N, 9] (3x3 row-major)
``charges``               arrays      Hirshfeld atomic charges, e, [N]
``gap``                   info        HOMO-LUMO gap, eV
``config_type``           info        the molecule's name in ``ase.build.molecule``
========================  ==========  ===============================================

Conventions: every structure is neutral and centred on its centre of mass, so the
dipole is taken about the origin (= the centre of mass; for a neutral molecule
it does not depend on the origin). The polarizability is the polarizability
volume alpha/(4 pi eps0) in Å³ (1 Å³ = 1/14.3996 e·Å²/V) from the coupled-
perturbed equations (symmetric by construction; the log compares it with a
finite-field derivative of the dipole). ``shielding[a]`` is the full, non-symmetric
tensor of atom a with sigma_ij = d²E / dB_i dm_j (row: external field,
column: nuclear magnetic moment), in PySCF's convention; positive is shielded.
ASE writes the ``charges`` array under the extxyz column name ``charge`` and
reads it back as ``charges``.

Needs PySCF and its properties extension (PyTorch is not needed)::

    pip install pyscf pyscf-properties ase numpy

Run from the repository root::

    OMP_NUM_THREADS=2 python scripts/make_properties_dataset.py --out examples/molecules_pyscf.xyz

Seeded and deterministic; about 17 minutes on two shared cores with the
defaults (270 structures). The log prints a finite-difference check of the
forces, a finite-field check of the polarizability, the polarizability
asymmetry, and the largest net force and charge sum.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import molecule
from ase.io import write
from ase.units import Bohr, Hartree

warnings.filterwarnings("ignore", message="Module .* is under testing")

from pyscf import dft, gto, lib, scf  # noqa: E402
from pyscf.dft import numint  # noqa: E402
from pyscf.prop import nmr, polarizability  # noqa: E402
from pyscf.prop.nmr import rhf as _nmr_rhf  # noqa: E402
from pyscf.prop.nmr import rks as _nmr_rks  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

MOLECULES = (
    "H2", "CO", "H2O", "HCN", "NH3", "H2CO", "CH4", "HCOOH", "CH3OH", "C2H4",
    "CH3CN", "H3CNH2", "CH3CH2OH", "CH3CONH2", "CH3COCH3",
)
"""Names in ``ase.build.molecule`` (G2 set): closed-shell, neutral, 2 to 10 atoms of H, C, N, O."""

ANGSTROM_PER_BOHR = Bohr
POLARIZABILITY_AU_TO_A3 = Bohr**3


# pyscf-properties' NMR response function assumes the Krylov solver always hands it
# the three field components together; for a linear molecule one of them has no
# response and the solver drops it, so accept any number of components.
def _nmr_gen_vind(mf, mo_coeff, mo_occ):
    vresp = mf.gen_response(singlet=True, hermi=2)
    orbo = mo_coeff[:, mo_occ > 0]
    nocc = orbo.shape[1]
    nmo = mo_coeff.shape[1]

    def vind(mo1):
        dm1 = np.asarray([mo_coeff @ (x * 2) @ orbo.conj().T for x in mo1.reshape(-1, nmo, nocc)])
        dm1 = dm1 - dm1.conj().transpose(0, 2, 1)
        return lib.einsum("xpq,pi,qj->xij", vresp(dm1), mo_coeff.conj(), orbo).ravel()

    return vind


_nmr_rhf.gen_vind = _nmr_gen_vind


# pyscf-properties' DFT GIAO exchange-correlation term asks the grid loop for a
# block size that is not a multiple of the AO block size when the grid is small,
# which current pyscf rejects; round it up (only used for --xc other than HF).
class _RoundedBlocks:
    def __init__(self, ni):
        self._ni = ni

    def __getattr__(self, name):
        return getattr(self._ni, name)

    def block_loop(self, *args, blksize=None, **kwargs):
        if blksize is not None:
            blksize = -(-blksize // numint.BLKSIZE) * numint.BLKSIZE
        return self._ni.block_loop(*args, blksize=blksize, **kwargs)


_get_vxc_giao = _nmr_rks.get_vxc_giao
_nmr_rks.get_vxc_giao = lambda ni, *a, **kw: _get_vxc_giao(_RoundedBlocks(ni), *a, **kw)


def molecule_key(name: str) -> int:
    """The random stream of a molecule: its place in :data:`MOLECULES`, else a CRC32 of its name,
    so a molecule's conformers do not depend on which other molecules are asked for."""
    return MOLECULES.index(name) if name in MOLECULES else zlib.crc32(name.encode())


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random proper rotation matrix."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def conformer(name: str, rng: np.random.Generator, sigma_range: tuple[float, float]) -> Atoms:
    """The G2 geometry of ``name``, rattled (Gaussian, sigma drawn in ``sigma_range`` Å),
    rotated at random and centred on its centre of mass."""
    atoms = molecule(name)
    sigma = float(rng.uniform(*sigma_range))
    atoms.positions += rng.normal(scale=sigma, size=atoms.positions.shape)
    atoms.positions -= atoms.get_center_of_mass()
    atoms.positions = atoms.positions @ random_rotation(rng).T
    atoms.positions -= atoms.get_center_of_mass()
    atoms.info.clear()
    return atoms


def build_mol(atoms: Atoms, basis: str) -> gto.Mole:
    return gto.M(
        atom=[(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)],
        unit="Angstrom", basis=basis, charge=0, spin=0, verbose=0,
    )


def run_scf(mol: gto.Mole, xc: str, field_au=None):
    """Converged RHF or RKS; ``field_au`` adds a uniform electric field (a.u.) coupled as +E·r."""
    if xc.upper() == "HF":
        mf = scf.RHF(mol)
    else:
        mf = dft.RKS(mol)
        mf.xc = xc
    mf.conv_tol = 1e-11
    mf.conv_tol_grad = 1e-7
    mf.max_cycle = 200
    if field_au is not None:
        with mol.with_common_orig((0.0, 0.0, 0.0)):
            r = mol.intor_symmetric("int1e_r", comp=3)
        h1 = mol.intor_symmetric("int1e_kin") + mol.intor_symmetric("int1e_nuc") + np.einsum("x,xij->ij", field_au, r)
        mf.get_hcore = lambda *args: h1
    mf.kernel()
    if not mf.converged:
        raise RuntimeError(f"SCF did not converge for {mol.atom}")
    return mf


def dipole_au(mf) -> np.ndarray:
    """Electronic plus nuclear dipole about the origin, atomic units."""
    mol = mf.mol
    with mol.with_common_orig((0.0, 0.0, 0.0)):
        r = mol.intor_symmetric("int1e_r", comp=3)
    electronic = np.einsum("xij,ji->x", r, mf.make_rdm1())
    nuclear = mol.atom_charges() @ mol.atom_coords()
    return nuclear - electronic


def hirshfeld_charges(mf, level: int = 3, chunk: int = 20000) -> np.ndarray:
    """Hirshfeld charges from free-atom densities (spherically averaged atomic HF in the same basis).

    The molecular density on the grid is scaled to integrate to the exact electron
    count, so the charges sum to the total charge.
    """
    mol = mf.mol
    grids = dft.gen_grid.Grids(mol)
    grids.level = level
    grids.build()
    dm = mf.make_rdm1()
    dm_free = scf.hf.init_guess_by_atom(mol)
    slices = mol.aoslice_by_atom()[:, 2:4]
    populations = np.zeros(mol.natm)
    total = 0.0
    for start in range(0, len(grids.weights), chunk):
        coords = grids.coords[start:start + chunk]
        weights = grids.weights[start:start + chunk]
        ao = numint.eval_ao(mol, coords, deriv=0)
        rho = numint.eval_rho(mol, ao, dm)
        free = np.stack([numint.eval_rho(mol, ao[:, a:b], dm_free[a:b, a:b]) for a, b in slices])
        free_total = free.sum(axis=0)
        share = np.divide(free, free_total, out=np.zeros_like(free), where=free_total > 1e-30)
        populations += (share * (weights * rho)).sum(axis=1)
        total += float(weights @ rho)
    populations *= mol.nelectron / total
    return mol.atom_charges() - populations


def compute(atoms: Atoms, basis: str, xc: str) -> dict:
    mol = build_mol(atoms, basis)
    mf = run_scf(mol, xc)
    gradient = mf.nuc_grad_method().kernel()  # dE/dR, Hartree/Bohr
    if xc.upper() == "HF":
        alpha = polarizability.rhf.Polarizability(mf).polarizability()
        sigma = nmr.RHF(mf).kernel()
    else:
        alpha = polarizability.rks.Polarizability(mf).polarizability()
        sigma = nmr.RKS(mf).kernel()
    nocc = int(np.count_nonzero(mf.mo_occ > 0))
    return {
        "energy": float(mf.e_tot) * Hartree,
        "forces": -np.asarray(gradient) * Hartree / Bohr,
        "dipole": dipole_au(mf) * ANGSTROM_PER_BOHR,
        "polarizability": np.asarray(alpha) * POLARIZABILITY_AU_TO_A3,
        "shielding": np.asarray(sigma).reshape(len(atoms), 9),
        "charges": hirshfeld_charges(mf),
        "gap": float(mf.mo_energy[nocc] - mf.mo_energy[nocc - 1]) * Hartree,
    }


def check_forces(atoms: Atoms, forces: np.ndarray, basis: str, xc: str, step: float = 1e-3) -> float:
    """Largest |F - F_fd| (eV/Å) over all coordinates, central differences of the energy."""
    fd = np.zeros_like(forces)
    for i in range(len(atoms)):
        for k in range(3):
            energies = []
            for s in (step, -step):
                shifted = atoms.copy()
                shifted.positions[i, k] += s
                energies.append(run_scf(build_mol(shifted, basis), xc).e_tot * Hartree)
            fd[i, k] = -(energies[0] - energies[1]) / (2 * step)
    return float(np.abs(fd - forces).max())


def check_polarizability(atoms: Atoms, alpha_a3: np.ndarray, basis: str, xc: str, field: float = 1e-4) -> float:
    """Largest |alpha - alpha_ff| (Å³): central finite field on the dipole."""
    mol = build_mol(atoms, basis)
    alpha_ff = np.zeros((3, 3))
    for k in range(3):
        dip = []
        for s in (field, -field):
            e = np.zeros(3)
            e[k] = s
            dip.append(dipole_au(run_scf(mol, xc, field_au=e)))
        # +E·r in the one-electron Hamiltonian is the potential energy of an electron (charge -1) in a
        # uniform field E, so mu(E) = mu(0) + alpha E
        alpha_ff[:, k] = (dip[0] - dip[1]) / (2 * field)
    return float(np.abs(alpha_ff * POLARIZABILITY_AU_TO_A3 - alpha_a3).max())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "examples" / "molecules_pyscf.xyz")
    parser.add_argument("--per-molecule", type=int, default=18, help="conformers per molecule (default 18)")
    parser.add_argument("--basis", default="def2-svp", help="Gaussian basis set (default def2-svp)")
    parser.add_argument("--xc", default="HF", help="HF (default) or a DFT functional, e.g. b3lyp")
    parser.add_argument("--molecules", nargs="+", default=list(MOLECULES), help="names in ase.build.molecule")
    parser.add_argument("--sigma", type=float, nargs=2, default=(0.03, 0.08),
                        help="range of the Gaussian displacement width, Å (default 0.03 0.08)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-checks", action="store_true", help="skip the finite-difference checks")
    args = parser.parse_args(argv)

    print(f"pyscf, {args.xc}/{args.basis}, {args.per_molecule} conformers x {len(args.molecules)} molecules, "
          f"seed {args.seed}, {lib.num_threads()} threads", flush=True)
    start = time.time()
    frames, worst_asym, checked = [], 0.0, False
    worst_charge_sum, worst_net_force = 0.0, 0.0
    for name in args.molecules:
        rng = np.random.default_rng([args.seed, molecule_key(name)])
        t0 = time.time()
        for c in range(args.per_molecule):
            atoms = conformer(name, rng, tuple(args.sigma))
            result = compute(atoms, args.basis, args.xc)
            asym = float(np.abs(result["polarizability"] - result["polarizability"].T).max())
            worst_asym = max(worst_asym, asym)
            worst_charge_sum = max(worst_charge_sum, abs(float(result["charges"].sum())))
            worst_net_force = max(worst_net_force, float(np.abs(result["forces"].sum(axis=0)).max()))
            frame = atoms.copy()
            frame.info["energy"] = result["energy"]
            frame.info["dipole"] = result["dipole"]
            frame.info["polarizability"] = result["polarizability"].reshape(9)
            frame.info["gap"] = result["gap"]
            frame.info["config_type"] = name
            frame.arrays["forces"] = result["forces"]
            frame.arrays["shielding"] = result["shielding"]
            frame.arrays["charges"] = result["charges"]
            frames.append(frame)
            if c == 0 and len(atoms) >= 3 and not checked and not args.no_checks:  # the first polyatomic
                checked = True
                err = check_forces(atoms, result["forces"], args.basis, args.xc)
                print(f"check: forces vs central finite difference of the energy ({name}, step 1e-3 Å): "
                      f"max |dF| = {err:.2e} eV/Å (max |F| = {np.abs(result['forces']).max():.2f})", flush=True)
                err = check_polarizability(atoms, result["polarizability"], args.basis, args.xc)
                print(f"check: polarizability vs finite field on the dipole ({name}, field 1e-4 a.u.): "
                      f"max |dalpha| = {err:.2e} Å³ (max |alpha| = {np.abs(result['polarizability']).max():.2f})",
                      flush=True)
        print(f"{name:>9}: {args.per_molecule} conformers, {len(atoms)} atoms, {time.time() - t0:.0f} s "
              f"(total {time.time() - start:.0f} s)", flush=True)

    print(f"check: polarizability max |a - a^T| = {worst_asym:.2e} Å³")
    print(f"check: max |sum of charges| = {worst_charge_sum:.2e} e")
    print(f"check: max |sum of forces| component = {worst_net_force:.2e} eV/Å")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    write(tmp, frames, format="extxyz")
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, {len(frames)} structures) "
          f"in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
