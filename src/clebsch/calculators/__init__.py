"""Running a trained model: ASE calculator, molecular dynamics, relaxation, export.

- :class:`ClebschCalculator` — an ASE calculator over a model (or a packaged
  model file), with a Verlet neighbour list (:class:`VerletList`, from
  :mod:`clebsch.graph.verlet`); ``compile=True`` runs energy, forces and
  stress as one captured, compiled graph (:class:`CompiledPotential`).
- :func:`md`, :func:`relax` — molecular dynamics (NVE, Langevin, NPT) and
  geometry/cell relaxation, behind ``clebsch md`` and ``clebsch relax``.
- :func:`export`, :func:`load_exported` — a ``torch.export`` archive that runs
  without clebsch's model classes.
- :func:`relax_many` — many small structures relaxed together (FIRE per
  structure, one batched forward pass per step).
- :func:`atomic_virials` — per-atom virials from the edge-vector gradient
  (the calculator's ``stresses``).
- :class:`CommitteeCalculator` — several models on one neighbour list: the mean
  and standard deviation of energy and forces (:mod:`clebsch.uncertainty`).
- :func:`vibrational_frequencies`, :func:`phonopy_force_constants` — harmonic
  vibrations and phonons from the exact Hessian (:mod:`clebsch.calculators._vibrations`).
- :func:`write_lammps` — the files LAMMPS's ``pair_style mliap unified`` needs
  (:mod:`clebsch.calculators.lammps`).
"""

from ._calculator import ClebschCalculator, load_model
from ._committee import CommitteeCalculator
from ._compiled import CompiledPotential
from ._dynamics import md, relax
from ._batched import relax_many
from ._export import ExportedPotential, export, load_exported
from ._virials import atomic_virials
from ._vibrations import (NormalModes, external_modes, hessian, normal_modes, phonopy_finite_displacements,
                          phonopy_force_constants, phonopy_from_atoms, vibrational_frequencies)
from .lammps import write_lammps
from ..graph.verlet import VerletList

__all__ = [
    "ClebschCalculator",
    "CommitteeCalculator",
    "CompiledPotential",
    "ExportedPotential",
    "atomic_virials",
    "hessian",
    "NormalModes",
    "external_modes",
    "normal_modes",
    "phonopy_finite_displacements",
    "phonopy_from_atoms",
    "phonopy_force_constants",
    "vibrational_frequencies",
    "VerletList",
    "export",
    "load_exported",
    "load_model",
    "md",
    "relax",
    "relax_many",
    "write_lammps",
]
