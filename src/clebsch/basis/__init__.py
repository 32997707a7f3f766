"""Atom-centred Gaussian basis sets: the layouts of electron densities and Hamiltonians.

A :class:`GaussianBasis` holds an element's shells (as PySCF and basis-set
libraries write them), says which irreps an atom's functions form, converts
coefficients and matrices between a quantum-chemistry code's order and this
library's (e3nn's) real basis, and evaluates functions, densities and overlaps
on :func:`molecular_grid` points. Depends on :mod:`clebsch.o3` only.

Examples
--------
>>> basis = GaussianBasis({"H": [[0, [1.0, 1.0]], [1, [0.5, 1.0]]]})
>>> basis.irreps("H")
1x0e+1x1o
"""

from ._analysis import (assemble_matrix, canonical_orthogonalisation, density_report, orbital_energies, overlap_matrix,
                        write_density_cube)
from ._gaussian import BOHR, GaussianBasis, pyscf_to_clebsch, standard_real_harmonics
from ._grid import molecular_grid

__all__ = ["BOHR", "GaussianBasis", "assemble_matrix", "canonical_orthogonalisation", "density_report",
           "molecular_grid", "orbital_energies", "overlap_matrix", "pyscf_to_clebsch", "standard_real_harmonics",
           "write_density_cube"]
