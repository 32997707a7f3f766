"""clebsch: E(3)-equivariant neural networks for atoms.

The library is layered; each subpackage imports only the ones below it::

    clebsch.o3           irreps, rotations, Wigner D, Wigner 3j, spherical harmonics
    clebsch.nn           tensor products, linear maps, gates, radial bases
    clebsch.testing      equivariance and force checks
    clebsch.graph        AtomicGraph, neighbour lists, batching
    clebsch.data         datasets, splits, statistics
    clebsch.basis        Gaussian basis sets: densities and matrices in an atomic-orbital basis
    clebsch.models       the model families, output heads and physics terms
    clebsch.uncertainty  committees and last-layer (LLPR) uncertainties
    clebsch.train        configuration, trainer, fine-tuning, committees, losses, metrics, checkpoints
    clebsch.calculators  ASE calculator, MD, relaxation, export, LAMMPS, vibrations
    clebsch.studies      learning curves, symmetry breaking, an equivariant autoencoder
    clebsch.cli          the ``clebsch`` command

Subpackages are imported on first use, so ``import clebsch`` stays light.
"""

import importlib

__version__ = "0.1.0"

_SUBPACKAGES = ("o3", "nn", "testing", "graph", "data", "models", "train", "calculators", "uncertainty", "basis",
                "studies", "cli")


def __getattr__(name):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name == "load":
        from .models.package import load

        return load
    if name == "keep_freed_memory":
        from ._memory import keep_freed_memory

        return keep_freed_memory
    raise AttributeError(f"module 'clebsch' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBPACKAGES) + ["load", "keep_freed_memory"])
