"""Generate ``examples/water_clusters.xyz.xz``: Kohn–Sham matrices and fitted densities of water clusters and ethanol.

Perturbed water clusters (monomer to pentamer) and ethanol configurations from
rMD17, each computed with PySCF (default PBE/def2-SVP, spherical AO basis,
restricted Kohn–Sham). Per structure the extended XYZ file holds:

==========================  ==========  ====================================================
key                         place       content
==========================  ==========  ====================================================
``energy``                  info        total energy, eV
``dipole``                  info        dipole moment of the SCF density, e·Å, [3]
``fock``                    info        converged Kohn–Sham matrix F, Hartree, n_ao*n_ao row-major
``orbital_energies``        info        eigenvalues of F C = S C e, Hartree, [n_ao], ascending
``n_electrons``             info        number of electrons (int)
``homo_lumo_gap``           info        e(LUMO) - e(HOMO), eV
``scf_cycles``              info        SCF iterations from PySCF's default (minao) guess
``density_fit_error``       info        int |rho_fit - rho_scf| / int rho_scf on the DFT grid
``config_type``             info        monomer, dimer, trimer, tetramer, pentamer, ethanol, ring_dimer or
                                        ring_trimer (consecutive molecules cut from a perturbed ring)
``source_frame``            info        ethanol only: the frame's index in the rMD17 file
``ring_size``               info        ring fragments only: the size of the ring they were cut from
``density_coefficients``    arrays      density fitted in the auxiliary basis, [N, width]
==========================  ==========  ====================================================

Every matrix is in PySCF's AO order for ``mol.cart=False``: atoms in order, each
atom's shells in basis order, each shell's components in PySCF's order (p as
x, y, z; l >= 2 as m = -l..l). ``density_coefficients[a]`` holds atom a's
auxiliary coefficients in PySCF's auxmol order, then zeros up to the widest
element, with rho(r) = sum_P c_P chi_P(r) and chi_P PySCF's normalised auxiliary
functions. The coefficients minimise the Coulomb energy of rho_scf - rho_fit:
c = J^-1 (P|mn) D_mn with J = (P|Q).

The per-element basis sets (as PySCF's ``mol._basis`` holds them) go to
``--basis-json``; ``--fixture`` writes a small reference file (one water
molecule: AO and auxiliary function values at random points, S, F, D, a DFT
grid with rho_scf and rho_fit) for testing a GTO implementation against PySCF.

Needs PySCF, ASE and NumPy (PyTorch is not needed)::

    pip install pyscf ase numpy

Run from the repository root::

    OMP_NUM_THREADS=1 python scripts/make_electronic_dataset.py

With the defaults (231 structures) this takes about 21 minutes on one shared core
and writes a 3.2 MB file (13.3 MB uncompressed); examples/water_clusters.md is its
data card. The ring fragments of ``examples/water_fragments.xyz.xz`` (8 minutes)::

    OMP_NUM_THREADS=1 python scripts/make_electronic_dataset.py --digits 10 \
        --counts monomer=0,dimer=0,trimer=0,tetramer=0,pentamer=0,ethanol=0,ring_dimer=120,ring_trimer=60 \
        --out examples/water_fragments.xyz.xz

Seeded and deterministic; each structure has its own random stream
([seed, config_type, index]), so asking for more structures of one kind with
``--counts`` keeps the ones already made.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import scipy.linalg
from ase import Atoms
from ase.io import read
from pyscf import df, dft, gto, lib
from pyscf.data import nist
from pyscf.df import incore

ROOT = Path(__file__).resolve().parent.parent

ANGSTROM_PER_BOHR = lib.param.BOHR
"""PySCF's Bohr radius in Å (0.52917721092): every Bohr <-> Å conversion here uses it."""
EV_PER_HARTREE = nist.HARTREE2EV
"""PySCF's Hartree in eV (27.21138602)."""

CLUSTER_SIZES = {"monomer": 1, "dimer": 2, "trimer": 3, "tetramer": 4, "pentamer": 5}
RING_FRAGMENTS = {"ring_dimer": (2, (3, 4, 5)), "ring_trimer": (3, (4, 5))}
"""Fragments of perturbed rings: kind -> (molecules kept, ring sizes drawn from). Two neighbouring molecules of
a 3- to 5-ring, or three consecutive molecules (an open chain) of a 4- or 5-ring: the hydrogen bonds of the
cyclic clusters without any whole ring, so that a model trained on them meets the rings only at test time."""
DEFAULT_COUNTS = {"monomer": 100, "dimer": 80, "trimer": 15, "tetramer": 8, "pentamer": 8, "ethanol": 20,
                  "ring_dimer": 0, "ring_trimer": 0}
ELEMENTS = ("H", "C", "O")
"""Elements whose basis sets go to the JSON file (and set the width of ``density_coefficients``)."""

OH_BOND = 0.970  # Å, close to the PBE/def2-SVP monomer
HOH_ANGLE = np.deg2rad(104.5)
OO_DISTANCE = 2.80  # Å, in the rings; 2.90 Å in the dimer


def config_key(config_type: str) -> int:
    """The random stream of a kind of structure (independent of which other kinds are asked for)."""
    return zlib.crc32(config_type.encode())


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random proper rotation matrix."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def axis_angle_rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation by ``angle`` (radians) about ``axis`` (Rodrigues)."""
    k = axis / np.linalg.norm(axis)
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(angle) * kx + (1.0 - np.cos(angle)) * kx @ kx


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def water(oxygen: np.ndarray, first_oh: np.ndarray, plane_normal: np.ndarray) -> np.ndarray:
    """O, H, H positions: the first O–H along ``first_oh``, the second at the HOH angle in the
    plane normal to ``plane_normal``."""
    d = unit(first_oh)
    e = unit(np.cross(plane_normal, d))
    h1 = oxygen + OH_BOND * d
    h2 = oxygen + OH_BOND * (np.cos(HOH_ANGLE) * d + np.sin(HOH_ANGLE) * e)
    return np.array([oxygen, h1, h2])


def reference_cluster(n: int) -> np.ndarray:
    """Positions (Å), [3n, 3] in the order O H H per molecule, of an approximate minimum.

    n = 1: the monomer; n = 2: the Cs dimer (O–O 2.90 Å, linear hydrogen bond);
    n >= 3: a planar ring of oxygens (O–O 2.80 Å), each molecule donating its
    first H along the O–O line to the next one, the free H's alternately above
    and below the ring plane (uud for the trimer).
    """
    z = np.array([0.0, 0.0, 1.0])
    if n == 1:
        return water(np.zeros(3), np.array([1.0, 0.0, 0.0]), z)
    if n == 2:
        donor = water(np.zeros(3), np.array([1.0, 0.0, 0.0]), z)
        o2 = np.array([2.90, 0.0, 0.0])
        bisector = np.array([np.cos(np.deg2rad(57.0)), -np.sin(np.deg2rad(57.0)), 0.0])
        half = HOH_ANGLE / 2
        acceptor = np.array([o2,
                             o2 + OH_BOND * (np.cos(half) * bisector + np.sin(half) * z),
                             o2 + OH_BOND * (np.cos(half) * bisector - np.sin(half) * z)])
        return np.concatenate([donor, acceptor])
    radius = OO_DISTANCE / (2 * np.sin(np.pi / n))
    angles = 2 * np.pi * np.arange(n) / n
    oxygens = radius * np.stack([np.cos(angles), np.sin(angles), np.zeros(n)], axis=1)
    molecules = []
    for i in range(n):
        d = unit(oxygens[(i + 1) % n] - oxygens[i])
        up = z if i % 2 == 0 else -z
        # plane of the molecule contains d and +-z: its normal is d x up
        molecules.append(water(oxygens[i], d, np.cross(d, up)))
    return np.concatenate(molecules)


def geometry_problem(positions: np.ndarray, molecule_of: np.ndarray, min_any: float = 0.8,
                     min_intermolecular: float = 1.4) -> str | None:
    """Why a geometry is rejected (atoms closer than ``min_any`` Å, or atoms of different
    molecules closer than ``min_intermolecular`` Å), else None."""
    dist = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    if dist.min() < min_any:
        return f"atoms {np.unravel_index(dist.argmin(), dist.shape)} at {dist.min():.2f} Å"
    other = molecule_of[:, None] != molecule_of[None]
    if other.any() and dist[other].min() < min_intermolecular:
        return f"intermolecular distance {dist[other].min():.2f} Å"
    return None


def perturbed_cluster(n: int, rng: np.random.Generator, sigma_range: tuple[float, float],
                      rot_deg: float, shift: float, max_tries: int = 200) -> Atoms:
    """A reference cluster with random rigid moves of each molecule (rotation about its O by an
    angle of width ``rot_deg``, translation of width ``shift`` Å; not for the monomer), Gaussian
    displacements of every atom (width drawn in ``sigma_range`` Å), a uniformly random global
    rotation, centred on its centre of mass. Rejected draws are redrawn from the same stream."""
    reference = reference_cluster(n)
    molecule_of = np.repeat(np.arange(n), 3)
    symbols = ["O", "H", "H"] * n
    for _ in range(max_tries):
        positions = reference.copy()
        if n > 1:
            for m in range(n):
                block = slice(3 * m, 3 * m + 3)
                rot = axis_angle_rotation(rng.normal(size=3), rng.normal(scale=np.deg2rad(rot_deg)))
                origin = positions[3 * m]
                positions[block] = (positions[block] - origin) @ rot.T + origin + rng.normal(scale=shift, size=3)
        sigma = float(rng.uniform(*sigma_range))
        positions = positions + rng.normal(scale=sigma, size=positions.shape)
        if geometry_problem(positions, molecule_of) is None:
            break
    else:
        raise RuntimeError(f"no acceptable {n}-molecule cluster in {max_tries} draws")
    atoms = Atoms(symbols, positions=positions)
    atoms.positions -= atoms.get_center_of_mass()
    atoms.positions = atoms.positions @ random_rotation(rng).T
    atoms.positions -= atoms.get_center_of_mass()
    return atoms


def ring_fragment(kind: str, rng: np.random.Generator, sigma_range: tuple[float, float], rot_deg: float,
                  shift: float) -> Atoms:
    """``RING_FRAGMENTS[kind]``: a perturbed ring of a random size (as :func:`perturbed_cluster` makes it)
    cut to consecutive molecules starting at a random one, re-centred on its centre of mass;
    ``info["ring_size"]`` is the size of the ring it was cut from."""
    keep, sizes = RING_FRAGMENTS[kind]
    n = int(rng.choice(sizes))
    ring = perturbed_cluster(n, rng, sigma_range, rot_deg, shift)
    first = int(rng.integers(n))
    atoms = ring[[3 * ((first + m) % n) + k for m in range(keep) for k in range(3)]]
    atoms.positions -= atoms.get_center_of_mass()
    atoms.info["ring_size"] = n
    return atoms


def ethanol_frames(path: Path, count: int, rng: np.random.Generator) -> list[Atoms]:
    """``count`` frames of ``path`` in a seeded random order (a prefix of one permutation, so a larger
    count keeps the smaller one's frames); positions as in the file, no cell; ``info["source_frame"]``
    is the frame's index in the file."""
    if count == 0:
        return []
    frames = read(path, index=":")
    if count > len(frames):
        raise ValueError(f"{path} has {len(frames)} frames, {count} asked for with --counts ethanol={count}")
    order = rng.permutation(len(frames))[:count]
    out = []
    for i in order:
        atoms = Atoms(frames[i].get_chemical_symbols(), positions=frames[i].positions)
        atoms.info["source_frame"] = int(i)
        out.append(atoms)
    return out


def auxiliary_basis(name: str, lmax: int) -> dict:
    """The auxiliary basis ``name`` for :data:`ELEMENTS`, without shells of l > ``lmax``."""
    return {el: [shell for shell in gto.basis.load(name, el) if shell[0] <= lmax] for el in ELEMENTS}


def build_mol(atoms: Atoms, basis: str) -> gto.Mole:
    return gto.M(atom=[(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)],
                 unit="Angstrom", basis=basis, charge=0, spin=0, cart=False, verbose=0)


def run_rks(mol: gto.Mole, xc: str, grid_level: int, conv_tol: float):
    mf = dft.RKS(mol)
    mf.xc = xc
    mf.grids.level = grid_level
    mf.conv_tol = conv_tol
    mf.max_cycle = 200
    mf.kernel()
    if not mf.converged:
        raise RuntimeError(f"SCF did not converge ({mol.natm} atoms, {mf.cycles} cycles)")
    return mf


def fit_density(mol: gto.Mole, auxmol: gto.Mole, dm: np.ndarray) -> np.ndarray:
    """Coulomb-metric fit: c = J^-1 (P|mn) D_mn."""
    j2 = auxmol.intor("int2c2e")
    j3 = incore.aux_e2(mol, auxmol, "int3c2e", aosym="s1").reshape(mol.nao, mol.nao, auxmol.nao)
    v = np.einsum("mnP,mn->P", j3, dm)
    return np.linalg.solve(j2, v)


def densities_on_grid(mol, auxmol, dm, coeff, coords, chunk: int = 8000):
    """rho_scf and rho_fit (electrons/Bohr^3) at ``coords`` (Bohr)."""
    rho_scf, rho_fit = [], []
    for start in range(0, len(coords), chunk):
        c = coords[start:start + chunk]
        rho_scf.append(dft.numint.eval_rho(mol, mol.eval_gto("GTOval_sph", c), dm))
        rho_fit.append(auxmol.eval_gto("GTOval_sph", c) @ coeff)
    return np.concatenate(rho_scf), np.concatenate(rho_fit)


def dipole_au(mol: gto.Mole, dm: np.ndarray) -> np.ndarray:
    """Nuclear minus electronic dipole about the origin, atomic units (e·Bohr)."""
    with mol.with_common_orig((0.0, 0.0, 0.0)):
        r = mol.intor_symmetric("int1e_r", comp=3)
    return mol.atom_charges() @ mol.atom_coords() - np.einsum("xij,ji->x", r, dm)


def compute(atoms: Atoms, args, aux_basis: dict) -> dict:
    mol = build_mol(atoms, args.basis)
    mf = run_rks(mol, args.xc, args.level, args.conv_tol)
    dm = mf.make_rdm1()
    overlap = mol.intor_symmetric("int1e_ovlp")
    fock = mf.get_fock(dm=dm)
    fock = 0.5 * (fock + fock.T)
    orbital_energies = scipy.linalg.eigh(fock, overlap, eigvals_only=True)
    nocc = mol.nelectron // 2
    auxmol = df.addons.make_auxmol(mol, aux_basis)
    coeff = fit_density(mol, auxmol, dm)
    rho_scf, rho_fit = densities_on_grid(mol, auxmol, dm, coeff, mf.grids.coords)
    w = mf.grids.weights
    return {
        "mol": mol, "auxmol": auxmol, "overlap": overlap, "dm": dm,
        "energy": float(mf.e_tot) * EV_PER_HARTREE,
        "dipole": dipole_au(mol, dm) * ANGSTROM_PER_BOHR,
        "fock": fock,
        "orbital_energies": orbital_energies,
        "n_electrons": int(mol.nelectron),
        "homo_lumo_gap": float(orbital_energies[nocc] - orbital_energies[nocc - 1]) * EV_PER_HARTREE,
        "scf_cycles": int(mf.cycles),
        "density_fit_error": float(w @ np.abs(rho_fit - rho_scf) / (w @ rho_scf)),
        "coefficients": coeff,
        "mo_energy_difference": float(np.abs(orbital_energies - mf.mo_energy).max()),
        "fit_electrons": float(w @ rho_fit),
        "scf_electrons": float(w @ rho_scf),
    }


# --------------------------------------------------------------------------- writing


def _floats(values, fmt: str) -> str:
    return " ".join(fmt % v for v in np.asarray(values, dtype=float).ravel())


def extxyz_frame(atoms: Atoms, info: dict, arrays: dict, fmt: str) -> str:
    """One extended XYZ frame. ASE's writer rounds per-atom floats to 8 decimals, too few for
    the density coefficients, so the frame is written here (ASE reads it back)."""
    columns = ["species:S:1", "pos:R:3"] + [f"{k}:R:{np.asarray(v).reshape(len(atoms), -1).shape[1]}"
                                            for k, v in arrays.items()]
    head = [f'Properties={":".join(columns)}']
    for key, value in info.items():
        if isinstance(value, str):
            head.append(f"{key}={value}")
        elif isinstance(value, (int, np.integer)):
            head.append(f"{key}={int(value)}")
        elif np.ndim(value) == 0:
            head.append(f"{key}={float(value)!r}")
        else:
            head.append(f'{key}="{_floats(value, fmt)}"')
    head.append('pbc="F F F"')
    lines = [str(len(atoms)), " ".join(head)]
    for i, (s, p) in enumerate(zip(atoms.get_chemical_symbols(), atoms.positions)):
        row = [f"{s:<2}", _floats(p, "%.10f")]
        row += [_floats(np.asarray(v).reshape(len(atoms), -1)[i], fmt) for v in arrays.values()]
        lines.append(" ".join(row))
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write to ``path`` through a temporary name and a rename; ``.xz`` paths are compressed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    data = text.encode() if isinstance(text, str) else text
    if path.suffix == ".xz":
        data = lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def basis_json(args, aux_basis: dict) -> dict:
    mol = gto.M(atom=[(el, (0.0, 0.0, 2.0 * i)) for i, el in enumerate(ELEMENTS)], basis=args.basis,
                spin=None, verbose=0)
    auxmol = df.addons.make_auxmol(mol, aux_basis)

    def elements(m):
        return {el: [[shell[0]] + [list(map(float, p)) for p in shell[1:]] for shell in m._basis[el]]
                for el in ELEMENTS}

    return {
        "ao": {"name": args.basis, "elements": elements(mol)},
        "aux": {"name": f"{args.aux_basis} (shells with l <= {args.aux_lmax})", "elements": elements(auxmol)},
        "level_of_theory": f"RKS {args.xc.upper()}/{args.basis}, spherical AOs (mol.cart=False), DFT grid level "
                           f"{args.level}, conv_tol {args.conv_tol:g}; PySCF {pyscf_version()}",
        "units": {"exponent": "Bohr^-2", "positions": "Angstrom", "energy": "eV", "homo_lumo_gap": "eV",
                  "fock": "Hartree", "orbital_energies": "Hartree", "dipole": "e*Angstrom",
                  "density_coefficients": "Bohr^-3/2: rho [electrons/Bohr^3] = sum_P c_P chi_P(r), chi_P in "
                                          "Bohr^-3/2 at r in Bohr (multiply c by bohr_in_angstrom^-3/2 for chi_P "
                                          "normalised in Angstrom)",
                  "bohr_in_angstrom": ANGSTROM_PER_BOHR, "hartree_in_ev": EV_PER_HARTREE},
        "m_order": "pyscf: p as x,y,z; l>=2 as m=-l..l",
        "angular": "chi = R_l(r) Y_lm: R_l normalised (int R^2 r^2 dr = 1), Y_lm orthonormal real harmonics "
                   "without Condon-Shortley phase; l=1: (x, y, z); l>=2, m=-l..l: e3nn's l harmonics at (y, z, x). "
                   "Every function has int chi^2 = 1",
        "density_coefficients_width": max(int(np.diff(auxmol.aoslice_by_atom()[i, 2:4])[0])
                                          for i in range(auxmol.natm)),
        "aux_functions_per_element": {el: int(np.diff(auxmol.aoslice_by_atom()[i, 2:4])[0])
                                      for i, el in enumerate(ELEMENTS)},
        "ao_functions_per_element": {el: int(np.diff(mol.aoslice_by_atom()[i, 2:4])[0])
                                     for i, el in enumerate(ELEMENTS)},
        "format": "per element a list of shells [l, [exponent, coefficient, ...], ...]: PySCF's mol._basis, "
                  "contraction coefficients as in the basis library (primitives not normalised); PySCF "
                  "normalises each primitive radially and then the contracted function",
    }


def pyscf_version() -> str:
    import pyscf

    return pyscf.__version__


def parse_counts(text: str) -> dict:
    counts = dict(DEFAULT_COUNTS)
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in counts:
            raise argparse.ArgumentTypeError(f"unknown config_type {key!r} in --counts (known: {', '.join(counts)})")
        counts[key] = int(value)
    return counts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "examples" / "water_clusters.xyz.xz",
                        help="output extxyz (.xz: compressed), default examples/water_clusters.xyz.xz")
    parser.add_argument("--basis-json", type=Path, default=ROOT / "examples" / "water_clusters.basis.json")
    parser.add_argument("--fixture", type=Path, default=None,
                        help="also write the reference fixture here (e.g. tests/fixtures/pyscf_water_reference.npz)")
    parser.add_argument("--counts", type=parse_counts, default=dict(DEFAULT_COUNTS),
                        help="structures per config_type, e.g. monomer=100,dimer=80,trimer=15,tetramer=8,"
                             "pentamer=8,ethanol=20 (unnamed kinds keep their default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--xc", default="pbe")
    parser.add_argument("--basis", default="def2-svp")
    parser.add_argument("--aux-basis", default="def2-universal-jkfit")
    parser.add_argument("--aux-lmax", type=int, default=3, help="drop auxiliary shells above this l (default 3)")
    parser.add_argument("--level", type=int, default=3, help="DFT grid level (default 3)")
    parser.add_argument("--conv-tol", type=float, default=1e-9)
    parser.add_argument("--sigma", type=float, nargs=2, default=(0.05, 0.10),
                        help="range of the per-structure Gaussian displacement width, Å")
    parser.add_argument("--rotation", type=float, default=10.0, help="width of each molecule's rigid rotation, degrees")
    parser.add_argument("--shift", type=float, default=0.10, help="width of each molecule's rigid translation, Å")
    parser.add_argument("--ethanol", type=Path, default=Path("/work/shared/data/ethanol/train.xyz"))
    parser.add_argument("--digits", type=int, default=12, help="significant digits of fock, coefficients etc.")
    parser.add_argument("--with-overlap", action="store_true", help="also store the AO overlap matrix (info 'overlap')")
    args = parser.parse_args(argv)

    aux_basis = auxiliary_basis(args.aux_basis, args.aux_lmax)
    probe = gto.M(atom=[(el, (0.0, 0.0, 2.0 * i)) for i, el in enumerate(ELEMENTS)], basis=args.basis, spin=None,
                  verbose=0)
    probe_aux = df.addons.make_auxmol(probe, aux_basis)
    aux_sizes = {el: int(np.diff(probe_aux.aoslice_by_atom()[i, 2:4])[0]) for i, el in enumerate(ELEMENTS)}
    width = max(aux_sizes.values())
    fmt = f"%.{args.digits - 1}e"
    print(f"pyscf {pyscf_version()}, RKS {args.xc}/{args.basis}, aux {args.aux_basis} l<={args.aux_lmax} "
          f"(functions per element {aux_sizes}, width {width}), grid level {args.level}, seed {args.seed}, "
          f"{lib.num_threads()} threads", flush=True)

    write_atomic(args.basis_json, json.dumps(basis_json(args, aux_basis), indent=1) + "\n")
    if args.fixture is not None:
        write_fixture(args, aux_basis)

    start = time.time()
    text, stats = [], {}
    for config_type, count in args.counts.items():
        if config_type == "ethanol":
            structures = ethanol_frames(args.ethanol, count, np.random.default_rng([args.seed, config_key("ethanol")]))
        elif config_type in RING_FRAGMENTS:
            structures = [ring_fragment(config_type, np.random.default_rng([args.seed, config_key(config_type), i]),
                                        tuple(args.sigma), args.rotation, args.shift) for i in range(count)]
        else:
            structures = [perturbed_cluster(CLUSTER_SIZES[config_type],
                                            np.random.default_rng([args.seed, config_key(config_type), i]),
                                            tuple(args.sigma), args.rotation, args.shift) for i in range(count)]
        t0 = time.time()
        for atoms in structures:
            r = compute(atoms, args, aux_basis)
            coefficients = np.zeros((len(atoms), width))
            for a, (p0, p1) in enumerate(r["auxmol"].aoslice_by_atom()[:, 2:4]):
                coefficients[a, :p1 - p0] = r["coefficients"][p0:p1]
            info = {"config_type": config_type, "energy": r["energy"], "dipole": r["dipole"],
                    "homo_lumo_gap": r["homo_lumo_gap"], "n_electrons": r["n_electrons"],
                    "scf_cycles": r["scf_cycles"], "density_fit_error": r["density_fit_error"]}
            for key in ("source_frame", "ring_size"):
                if key in atoms.info:
                    info[key] = atoms.info[key]
            info["orbital_energies"] = r["orbital_energies"]
            info["fock"] = r["fock"]
            if args.with_overlap:
                info["overlap"] = r["overlap"]
            text.append(extxyz_frame(atoms, info, {"density_coefficients": coefficients}, fmt))
            s = stats.setdefault(config_type, {"cycles": [], "eps": [], "de": [], "dn": []})
            s["cycles"].append(r["scf_cycles"])
            s["eps"].append(r["density_fit_error"])
            s["de"].append(r["mo_energy_difference"])
            s["dn"].append(abs(r["fit_electrons"] - r["scf_electrons"]))
        if count:
            s = stats[config_type]
            print(f"{config_type:>9}: {count} structures, {len(structures[0])} atoms, {time.time() - t0:.0f} s; "
                  f"scf_cycles min/mean/max {min(s['cycles'])}/{np.mean(s['cycles']):.1f}/{max(s['cycles'])}; "
                  f"fit error mean {np.mean(s['eps']):.3%} max {max(s['eps']):.3%}; "
                  f"max |N_fit - N_scf| {max(s['dn']):.1e}; max |eig(F,S) - mo_energy| {max(s['de']):.1e} Ha "
                  f"(total {time.time() - start:.0f} s)", flush=True)
    write_atomic(args.out, "".join(text))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, {len(text)} structures, "
          f"{sum(len(t) for t in text) / 1e6:.2f} MB uncompressed) in {time.time() - start:.0f} s", flush=True)


# --------------------------------------------------------------------------- fixture


def write_fixture(args, aux_basis: dict, n_points: int = 150, grid_level: int = 0) -> None:
    """A small reference for one water molecule (the first perturbed monomer of the seed), all in Å units
    where a length is involved; see tests/fixtures/pyscf_water_reference.md."""
    atoms = perturbed_cluster(1, np.random.default_rng([args.seed, config_key("fixture")]), tuple(args.sigma),
                              args.rotation, args.shift)
    r = compute(atoms, args, aux_basis)
    mol, auxmol = r["mol"], r["auxmol"]
    rng = np.random.default_rng([args.seed, config_key("fixture points")])
    # random points within 3 Å of a randomly chosen atom, uniform in the ball
    centres = atoms.positions[rng.integers(len(atoms), size=n_points)]
    direction = rng.normal(size=(n_points, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    points = centres + direction * 3.0 * rng.uniform(size=(n_points, 1)) ** (1 / 3)
    points_bohr = points / ANGSTROM_PER_BOHR
    grids = dft.gen_grid.Grids(mol)
    grids.level = grid_level
    grids.build()
    rho_scf, rho_fit = densities_on_grid(mol, auxmol, r["dm"], r["coefficients"], grids.coords)
    bohr3 = ANGSTROM_PER_BOHR ** 3
    data = {
        "numbers": atoms.numbers.astype(np.int64),
        "positions": atoms.positions,
        "points": points,
        "ao_values": mol.eval_gto("GTOval_sph", points_bohr),
        "aux_values": auxmol.eval_gto("GTOval_sph", points_bohr),
        "overlap": r["overlap"],
        "aux_overlap": auxmol.intor_symmetric("int1e_ovlp"),
        "fock": r["fock"],
        "density_matrix": r["dm"],
        "orbital_energies": r["orbital_energies"],
        "grid_points": grids.coords * ANGSTROM_PER_BOHR,
        "grid_weights": grids.weights * bohr3,
        "rho_scf": rho_scf / bohr3,
        "rho_fit": rho_fit / bohr3,
        "density_coefficients": r["coefficients"],
        "n_electrons": np.int64(r["n_electrons"]),
        "energy": np.float64(r["energy"]),
        "bohr_in_angstrom": np.float64(ANGSTROM_PER_BOHR),
    }
    args.fixture.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.fixture.with_name(args.fixture.stem + ".tmp.npz")
    np.savez_compressed(tmp, **data)
    os.replace(tmp, args.fixture)
    print(f"wrote {args.fixture} ({args.fixture.stat().st_size / 1e3:.0f} kB): {n_points} points, "
          f"grid level {grid_level} ({len(grids.weights)} points, integrates rho_scf to "
          f"{grids.weights @ rho_scf:.6f} electrons)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
