"""Datasets: structure files to graphs, splits, batching, statistics.

- :func:`read_structures` — any ASE-readable file, errors naming file and frame.
- :func:`read_dataset`, :class:`AtomicDataset` — graphs built once (optional on-disk cache),
  targets read through a key map (:func:`key_map`) and checked against their declarations
  (:func:`read_targets`, :func:`graph_from_atoms`; per-edge targets joined to the
  neighbour list by :func:`join_edge_targets`); :func:`check_net_forces` warns about
  reference forces that do not sum to zero.
- :class:`TypeMap` — atomic numbers to species indices.
- :func:`split_indices`, :func:`save_split`, :func:`load_split` — reproducible splits.
- :func:`collate`, :func:`make_loader` — batched graphs for training.
- :func:`compute_statistics` and friends — reference energies, mean energy per atom,
  force RMS, average number of neighbours.

Units: Å, eV, eV/Å, eV/Å³ (stress, ASE's sign), e·Å (dipole).
"""

from .dataset import AtomicDataset, check_force_consistency, check_force_scale, check_net_forces, key_map, read_dataset
from .io import read_structures
from .targets import DEFAULT_KEYS, graph_from_atoms, join_edge_targets, read_targets, voigt_to_matrix
from .loader import collate, make_loader
from .splits import load_split, save_split, split_indices
from .statistics import (
    DatasetStatistics,
    average_num_neighbors,
    compute_statistics,
    force_rms,
    mean_energy_per_atom,
    reference_energies_from_file,
    reference_energies_least_squares,
)
from .type_map import TypeMap

__all__ = [
    "AtomicDataset",
    "graph_from_atoms",
    "read_targets",
    "join_edge_targets",
    "voigt_to_matrix",
    "DEFAULT_KEYS",
    "read_dataset",
    "check_net_forces",
    "check_force_scale",
    "check_force_consistency",
    "key_map",
    "read_structures",
    "TypeMap",
    "split_indices",
    "save_split",
    "load_split",
    "collate",
    "make_loader",
    "DatasetStatistics",
    "compute_statistics",
    "reference_energies_least_squares",
    "reference_energies_from_file",
    "mean_energy_per_atom",
    "force_rms",
    "average_num_neighbors",
]
