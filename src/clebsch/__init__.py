"""clebsch: E(3)-equivariant neural networks for atoms.

The library is layered; each subpackage imports only the ones below it::

    clebsch.o3           irreps, rotations, Wigner D, Wigner 3j, spherical harmonics
    clebsch.nn           tensor products, linear maps, gates, radial bases
    clebsch.testing      equivariance and force checks
    clebsch.graph        AtomicGraph, neighbour lists, batching
    clebsch.data         datasets, splits, statistics
    clebsch.models       SchNet, EGNN, PaiNN, NequIP, SEGNN, MACE and output heads
    clebsch.train        configuration, trainer, losses, metrics, checkpoints
    clebsch.calculators  ASE calculator
    clebsch.cli          the ``clebsch`` command

Subpackages are imported on first use, so ``import clebsch`` stays light.
"""

import importlib

__version__ = "0.1.0"

_SUBPACKAGES = ("o3", "nn", "testing", "graph", "data", "models", "train", "calculators", "cli")


def __getattr__(name):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name == "load":
        from .models.package import load

        return load
    raise AttributeError(f"module 'clebsch' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBPACKAGES) + ["load"])
