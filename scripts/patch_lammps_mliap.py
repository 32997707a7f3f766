"""Size ML-IAP's per-atom neighbour table by the longest neighbour list, not by the total pair count.

LAMMPS's ``MLIAPData::grow_neigharrays`` (src/ML-IAP/mliap_data.cpp, release
4 Jul 2026) grows ``lmp_firstneigh`` to ``natomneigh x nneigh``, where ``nneigh``
is the number of pairs of all atoms together: memory quadratic in the atom
count (13 GB at 1,372 atoms with ghost neighbour lists, 122 GB at 10,000). Each
row only ever holds one atom's neighbours, so ``natomneigh x (longest list)``
is enough. Applied by scripts/build_lammps.sh; idempotent.

    python scripts/patch_lammps_mliap.py LAMMPS_SOURCE_DIR
"""

import sys
from pathlib import Path

MARK = "// clebsch: rows as long as the longest neighbour list"


def patch(source: Path) -> bool:
    path = source / "src" / "ML-IAP" / "mliap_data.cpp"
    text = path.read_text()
    if MARK in text:
        return False
    grow_atoms = '    memory->grow(lmp_firstneigh, natomneigh, nneigh_max, "MLIAPData:lmp_firstneigh");\n'
    grow_pairs = '    memory->grow(lmp_firstneigh, natomneigh, nneigh, "MLIAPData:lmp_firstneigh");\n'
    count = "  int nneigh = 0;\n  for (int ii = 0; ii < natomneigh; ii++) {\n"
    tally = "    nneigh += ninside;\n  }\n"
    for piece in (grow_atoms, grow_pairs, count, tally):
        if text.count(piece) != 1:
            raise SystemExit(f"{path}: the code to patch has changed (looked for {piece.strip()!r})")
    text = text.replace(grow_atoms, "").replace(grow_pairs, "")
    text = text.replace(count, "  int nneigh = 0;\n  int nneigh_atom = 1;\n  for (int ii = 0; ii < natomneigh; ii++) {\n")
    text = text.replace(tally, "    nneigh += ninside;\n    if (ninside > nneigh_atom) nneigh_atom = ninside;\n  }\n"
                        f"  {MARK}\n"
                        "  memory->destroy(lmp_firstneigh);\n"
                        '  memory->create(lmp_firstneigh, natomneigh, nneigh_atom, "MLIAPData:lmp_firstneigh");\n')
    path.write_text(text)
    return True


if __name__ == "__main__":
    print("patched" if patch(Path(sys.argv[1])) else "already patched")
