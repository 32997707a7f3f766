"""Generate ``examples/qm_properties.xyz``: a QM9-style set of small organic molecules, GFN2-xTB properties.

Small neutral closed-shell molecules of H, C, N, O and F with 1 to 9 heavy
atoms, enumerated here (no list is downloaded): a seeded random grammar grows
a heavy-atom graph atom by atom (from one atom or from a ring scaffold), with
single, double and triple bonds, closes rings of 3 to 6 atoms, and lets RDKit
sanitise it and add the hydrogens. Molecules are de-duplicated by their
canonical SMILES and kept only if they pass the chemistry filters below, embed
in 3D (ETKDG v3, one conformer), survive a force-field optimisation (MMFF94,
else UFF) with their bonds intact, and converge in GFN2-xTB (tblite, single
point) with a HOMO-LUMO gap of at least ``--min-gap``. Per structure the
extended XYZ file holds:

=================  ==========  ==========================================================
key                place       content
=================  ==========  ==========================================================
``energy``         info        total GFN2-xTB energy, eV
``gap``            info        HOMO-LUMO gap, eV
``dipole``         info        dipole moment about the centre of mass, e·Å, [3]
``dipole_norm``    info        its length, e·Å
``smiles``         info        canonical SMILES of the molecular graph (no stereo), RDKit
``config_type``    info        ``heavy_<n>``: the number of heavy atoms n
``charges``        arrays      GFN2-xTB (Mulliken) partial charges, e, [N]
=================  ==========  ==========================================================

There are no forces: the geometries are force-field minima, not xTB minima,
and the file is meant for per-structure property prediction.

Chemistry filters (on the heavy-atom graph): no O-O, O-F, N-F or F-F bonds;
fluorine only on carbon; no N=O (nitroso, nitrite); at most two N-N / N-O
bonds; no atom with two multiple bonds (no allenes, ketenes, cumulenes); no
triple bond in a ring; ring sizes 3 to 6 only; at most three rings; no atom in
more than two rings; no atom shared by two rings of 3 or 4 atoms, nor a
multiple bond at an atom shared by two rings one of which has 3 or 4 atoms,
nor at the atoms shared by two bridged rings (strained bicycles, Bredt's
rule). After the optimisation, every
bond must be shorter than 1.3 times the sum of the covalent radii and every
non-bonded pair longer than the sum.

Needs RDKit, tblite and ASE (PyTorch is not needed)::

    pip install rdkit tblite ase numpy

Run from the repository root::

    OMP_NUM_THREADS=1 python scripts/make_qm_properties_dataset.py

Seeded and deterministic: the graphs come from one random stream (``--seed``),
and each molecule's conformer from a seed derived from its SMILES. About 80 s
on one core for the default 2,500 molecules.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import covalent_radii
from ase.units import Bohr, Hartree

from rdkit import Chem, RDLogger
from rdkit.Chem import AllChem

RDLogger.DisableLog("rdApp.*")

ROOT = Path(__file__).resolve().parent.parent

ELEMENTS = ("C", "N", "O", "F")
ELEMENT_WEIGHTS = (0.66, 0.15, 0.15, 0.04)
VALENCE = {"C": 4, "N": 3, "O": 2, "F": 1}
BOND_ORDER_WEIGHTS = {1: 0.76, 2: 0.18, 3: 0.06}
BOND_TYPES = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}

SCAFFOLDS = (
    "C1CC1", "C1CO1", "C1CN1", "C1CCC1", "C1COC1", "C1CNC1", "C1CCCC1", "C1CCOC1", "C1CCNC1",
    "C1CCCCC1", "C1CCOCC1", "C1CCNCC1", "C1COCCO1", "C1=CC1", "C1=CCC1", "C1=CCCC1", "C1=CCCCC1",
    "c1ccccc1", "c1ccncc1", "c1cnccn1", "c1cncnc1", "c1cc[nH]c1", "c1ccoc1", "c1cnc[nH]1", "c1cocn1",
    "c1conc1", "c1cn[nH]c1", "c1nc[nH]n1", "C1CC1C", "O=C1CCC1", "O=C1CCCN1", "O=C1CCOC1",
)
"""Ring scaffolds that growth may start from (besides a single atom): small saturated,
unsaturated and aromatic rings of C, N and O, written as SMILES."""
SCAFFOLD_PROBABILITY = 0.4
RING_CLOSURES = (0, 1, 2, 3)
RING_CLOSURE_WEIGHTS = (0.5, 0.32, 0.14, 0.04)
HEAVY_ATOM_WEIGHTS = {n: n**2 for n in range(1, 10)}
"""Relative frequency with which each heavy-atom count is asked for (small counts have few distinct
molecules and saturate; larger ones dominate, as in QM9)."""

FORBIDDEN_BONDS = {frozenset(p) for p in (("O", "O"), ("O", "F"), ("N", "F"), ("F", "F"))}
MAX_HETERO_BONDS = 2
"""At most this many bonds between two atoms that are not carbon (N-N, N-O) per molecule."""


def _weighted(rng: np.random.Generator, items, weights):
    p = np.asarray(weights, dtype=float)
    return items[int(rng.choice(len(items), p=p / p.sum()))]


def _free_valence(mol: Chem.RWMol, idx: int) -> int:
    atom = mol.GetAtomWithIdx(idx)
    used = sum(int(b.GetBondTypeAsDouble()) for b in atom.GetBonds()) + atom.GetNumExplicitHs()
    return VALENCE[atom.GetSymbol()] - used


def _bond_order(rng: np.random.Generator, limit: int) -> int:
    orders = [o for o in BOND_ORDER_WEIGHTS if o <= limit]
    return _weighted(rng, orders, [BOND_ORDER_WEIGHTS[o] for o in orders])


def _scaffold(smiles: str) -> Chem.RWMol:
    mol = Chem.MolFromSmiles(smiles)
    Chem.Kekulize(mol, clearAromaticFlags=True)
    return Chem.RWMol(mol)


def random_graph(rng: np.random.Generator, n_heavy: int) -> Chem.RWMol | None:
    """A random heavy-atom graph with ``n_heavy`` atoms (hydrogens implicit), not yet sanitised.

    Growth starts from one atom or, with probability :data:`SCAFFOLD_PROBABILITY`, from a ring
    scaffold that fits; each new atom (element drawn from :data:`ELEMENT_WEIGHTS`) binds to a
    random atom with free valence by a single, double or triple bond; then up to three ring
    closures join atoms two to five bonds apart (rings of 3 to 6 atoms).
    """
    fitting = [s for s in SCAFFOLDS if Chem.MolFromSmiles(s).GetNumAtoms() <= n_heavy]
    if fitting and rng.random() < SCAFFOLD_PROBABILITY:
        mol = _scaffold(_weighted(rng, fitting, [1.0] * len(fitting)))
    else:
        mol = Chem.RWMol()
        mol.AddAtom(Chem.Atom(_weighted(rng, ELEMENTS[:3], ELEMENT_WEIGHTS[:3])))
    while mol.GetNumAtoms() < n_heavy:
        open_atoms = [a.GetIdx() for a in mol.GetAtoms() if _free_valence(mol, a.GetIdx()) > 0]
        if not open_atoms:
            return None
        anchor = int(rng.choice(open_atoms))
        symbol = _weighted(rng, ELEMENTS, ELEMENT_WEIGHTS)
        order = _bond_order(rng, min(_free_valence(mol, anchor), VALENCE[symbol]))
        new = mol.AddAtom(Chem.Atom(symbol))
        mol.AddBond(anchor, new, BOND_TYPES[order])
    for _ in range(_weighted(rng, RING_CLOSURES, RING_CLOSURE_WEIGHTS)):
        distances = Chem.GetDistanceMatrix(mol, force=True)
        pairs = [(i, j) for i in range(n_heavy) for j in range(i + 1, n_heavy)
                 if 2 <= distances[i, j] <= 5 and _free_valence(mol, i) > 0 and _free_valence(mol, j) > 0]
        if not pairs:
            break
        i, j = pairs[int(rng.integers(len(pairs)))]
        order = 2 if rng.random() < 0.15 and min(_free_valence(mol, i), _free_valence(mol, j)) >= 2 else 1
        mol.AddBond(i, j, BOND_TYPES[order])
    return mol


def chemistry_problem(mol: Chem.Mol) -> str | None:
    """Why a sanitised molecule is rejected (see the module docstring), or None."""
    for atom in mol.GetAtoms():
        if atom.GetFormalCharge() != 0 or atom.GetNumRadicalElectrons() != 0:
            return "charged or radical"
        multiple = sum(1 for b in atom.GetBonds() if b.GetBondType() in (Chem.BondType.DOUBLE, Chem.BondType.TRIPLE))
        if multiple > 1:
            return "cumulated multiple bonds"
    for bond in mol.GetBonds():
        pair = frozenset((bond.GetBeginAtom().GetSymbol(), bond.GetEndAtom().GetSymbol()))
        if pair in FORBIDDEN_BONDS or ("F" in pair and pair != frozenset(("C", "F"))):
            return "forbidden bond"
        if bond.GetBondType() == Chem.BondType.TRIPLE and bond.IsInRing():
            return "triple bond in a ring"
        if bond.GetBondType() == Chem.BondType.DOUBLE and pair == frozenset(("N", "O")):
            return "nitroso group"
    hetero = sum(1 for b in mol.GetBonds() if b.GetBeginAtom().GetSymbol() != "C" and b.GetEndAtom().GetSymbol() != "C")
    if hetero > MAX_HETERO_BONDS:
        return "too many heteroatom-heteroatom bonds"
    rings = mol.GetRingInfo()
    if rings.NumRings() > 3:
        return "more than three rings"
    if any(len(r) > 6 for r in rings.AtomRings()):
        return "ring larger than six"
    ring_sets = [set(r) for r in rings.AtomRings()]
    for k, first in enumerate(ring_sets):
        for second in ring_sets[k + 1:]:
            shared = first & second
            if len(shared) > 2 and any(b.GetBondType() != Chem.BondType.SINGLE
                                       for a in shared for b in mol.GetAtomWithIdx(a).GetBonds()):
                return "multiple bond at a bridgehead"
    for atom in mol.GetAtoms():
        sizes = sorted(len(r) for r in rings.AtomRings() if atom.GetIdx() in r)
        if len(sizes) > 2:
            return "atom in more than two rings"
        if len(sizes) == 2 and sizes[1] <= 4:
            return "fused small rings"
        if len(sizes) == 2 and sizes[0] <= 4 and any(b.GetBondType() != Chem.BondType.SINGLE for b in atom.GetBonds()):
            return "multiple bond at a small-ring junction"
    return None


def canonical_smiles(mol: Chem.RWMol) -> str | None:
    """The canonical SMILES of a candidate graph if RDKit sanitises it and it passes the filters."""
    try:
        mol = mol.GetMol()
        Chem.SanitizeMol(mol)
    except (Chem.rdchem.MolSanitizeException, RuntimeError, ValueError):
        return None
    if chemistry_problem(mol) is not None:
        return None
    smiles = Chem.MolToSmiles(mol, isomericSmiles=False)
    check = Chem.MolFromSmiles(smiles)
    return smiles if check is not None and chemistry_problem(check) is None else None


def conformer_seed(smiles: str, seed: int) -> int:
    """The ETKDG seed of a molecule: its own, so its conformer does not depend on the others."""
    return (zlib.crc32(smiles.encode()) + 7919 * seed) % (2**31 - 1)


def embed(smiles: str, seed: int) -> tuple[Atoms, str] | None:
    """One ETKDG conformer, force-field optimised (MMFF94, else UFF), centred on its centre of mass.

    Returns the structure and the force field used, or None when embedding fails or the optimised
    geometry breaks a bond or brings non-bonded atoms within the sum of their covalent radii.
    """
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = conformer_seed(smiles, seed)
    if AllChem.EmbedMolecule(mol, params) != 0:
        return None
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMolecule(mol, maxIters=5000)
        field = "MMFF94"
    else:
        AllChem.UFFOptimizeMolecule(mol, maxIters=5000)
        field = "UFF"
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    positions = mol.GetConformer().GetPositions()
    if not np.isfinite(positions).all():
        return None
    bonded = np.zeros((len(numbers), len(numbers)), dtype=bool)
    for b in mol.GetBonds():
        bonded[b.GetBeginAtomIdx(), b.GetEndAtomIdx()] = bonded[b.GetEndAtomIdx(), b.GetBeginAtomIdx()] = True
    distances = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    radii = covalent_radii[numbers]
    limit = radii[:, None] + radii[None]
    off_diagonal = ~np.eye(len(numbers), dtype=bool)
    if (distances[bonded] > 1.3 * limit[bonded]).any():
        return None
    if (distances[~bonded & off_diagonal] < limit[~bonded & off_diagonal]).any():
        return None
    atoms = Atoms(numbers=numbers, positions=positions)
    atoms.positions = np.round(atoms.positions - atoms.get_center_of_mass(), 5)  # as written to the file
    return atoms, field


def write_compact_extxyz(path: Path, frames: list[Atoms]) -> None:
    """Extended XYZ as ASE writes it, with 5 decimals per atom column instead of 8 (a third smaller).

    Positions are rounded to 1e-5 Å before the xTB calculation, so nothing is lost; charges are
    rounded to 1e-5 e. Written to a temporary name and renamed.
    """
    from ase.io.extxyz import key_val_dict_to_str

    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        for atoms in frames:
            info = {k: (np.round(v, 8) if isinstance(v, np.ndarray) else v) for k, v in atoms.info.items()}
            header = key_val_dict_to_str({"Properties": "species:S:1:pos:R:3:charge:R:1", **info, "pbc": "F F F"})
            handle.write(f"{len(atoms)}\n{header}\n")
            for symbol, (x, y, z), q in zip(atoms.get_chemical_symbols(), atoms.positions, atoms.arrays["charges"]):
                handle.write(f"{symbol:<2}{x:11.5f}{y:11.5f}{z:11.5f}{q:10.5f}\n")
    os.replace(tmp, path)


def xtb_properties(atoms: Atoms) -> dict:
    """GFN2-xTB single point (tblite): energy, HOMO-LUMO gap, dipole and partial charges in eV, e·Å, e."""
    from tblite.interface import Calculator

    calc = Calculator("GFN2-xTB", atoms.numbers, atoms.positions / Bohr, charge=0.0, uhf=0)
    calc.set("verbosity", 0)
    result = calc.singlepoint()
    occupations = np.asarray(result.get("orbital-occupations"))
    energies = np.asarray(result.get("orbital-energies"))
    homo = int(np.flatnonzero(occupations > 1.0).max())
    return {
        "energy": float(result.get("energy")) * Hartree,
        "gap": float(energies[homo + 1] - energies[homo]) * Hartree,
        "dipole": np.asarray(result.get("dipole")) * Bohr,  # e·Bohr about the origin = the centre of mass
        "charges": np.asarray(result.get("charges"), dtype=float),
    }


def enumerate_smiles(rng: np.random.Generator, max_attempts: int):
    """Yield new canonical SMILES with their heavy-atom count, in the order the random stream finds them."""
    seen = set()
    counts = list(HEAVY_ATOM_WEIGHTS)
    weights = [HEAVY_ATOM_WEIGHTS[n] for n in counts]
    for _ in range(max_attempts):
        n_heavy = _weighted(rng, counts, weights)
        graph = random_graph(rng, n_heavy)
        if graph is None:
            continue
        smiles = canonical_smiles(graph)
        if smiles is None or smiles in seen:
            continue
        seen.add(smiles)
        yield smiles, n_heavy


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "examples" / "qm_properties.xyz")
    parser.add_argument("--molecules", type=int, default=2500, help="molecules to keep (default 2500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-gap", type=float, default=0.5,
                        help="drop molecules whose xTB HOMO-LUMO gap is below this, eV (default 0.5)")
    parser.add_argument("--max-attempts", type=int, default=2_000_000, help="random graphs to draw at most")
    args = parser.parse_args(argv)

    print(f"GFN2-xTB (tblite) on RDKit ETKDG + MMFF94/UFF conformers, {args.molecules} molecules, seed {args.seed}",
          flush=True)
    start = time.time()
    rng = np.random.default_rng(args.seed)
    frames = []
    rejected = Counter()
    fields = Counter()
    for smiles, n_heavy in enumerate_smiles(rng, args.max_attempts):
        embedded = embed(smiles, args.seed)
        if embedded is None:
            rejected["embedding or geometry"] += 1
            continue
        atoms, field = embedded
        try:
            props = xtb_properties(atoms)
        except Exception as err:  # tblite raises a plain RuntimeError when the SCF does not converge
            rejected[f"xTB: {str(err).splitlines()[0][:60]}"] += 1
            continue
        if props["gap"] < args.min_gap:
            rejected[f"gap below {args.min_gap} eV"] += 1
            continue
        fields[field] += 1
        atoms.info["energy"] = props["energy"]
        atoms.info["gap"] = props["gap"]
        atoms.info["dipole"] = props["dipole"]
        atoms.info["dipole_norm"] = float(np.linalg.norm(props["dipole"]))
        atoms.info["smiles"] = smiles
        atoms.info["config_type"] = f"heavy_{n_heavy}"
        atoms.arrays["charges"] = props["charges"]
        frames.append(atoms)
        if len(frames) % 250 == 0:
            print(f"{len(frames)}/{args.molecules} molecules, {time.time() - start:.0f} s", flush=True)
        if len(frames) >= args.molecules:
            break
    if len(frames) < args.molecules:
        print(f"warning: only {len(frames)} molecules after {args.max_attempts} attempts", file=sys.stderr)

    heavy = Counter(f.info["config_type"] for f in frames)
    print("heavy atoms: " + ", ".join(f"{k}: {heavy[k]}" for k in sorted(heavy, key=lambda s: int(s.split('_')[1]))))
    print(f"force fields: {dict(fields)}; rejected after enumeration: {dict(rejected)}")
    gap = np.array([f.info["gap"] for f in frames])
    mu = np.array([f.info["dipole_norm"] for f in frames])
    charge_sums = np.array([abs(f.arrays["charges"].sum()) for f in frames])
    print(f"gap {gap.mean():.3f} ± {gap.std():.3f} eV (min {gap.min():.3f}); |dipole| {mu.mean():.3f} ± "
          f"{mu.std():.3f} e·Å; max |sum of charges| {charge_sums.max():.1e} e")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_compact_extxyz(args.out, frames)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, {len(frames)} structures, "
          f"{sum(len(f) for f in frames)} atoms) in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
