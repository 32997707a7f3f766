"""Model families behind one contract: ``model(graph) -> dict`` of named tensors.

Every family is a *representation* (per-atom features, see :class:`Representation`)
wrapped by a :class:`Potential` that adds output heads (one per target kind) and
the autograd responses (forces, stress, Born charges). What each output is —
its level, layout, unit — is declared once in :mod:`clebsch.targets`. Build any
model from a plain dict::

    model = build_model({"name": "nequip", "species": ["H", "C", "O"], "cutoff": 5.0})
"""

from ..targets import TARGETS, Target, declare, register_target, resolve_targets
from ._heads import (
    HEADS,
    AtomHead,
    DipoleHead,
    EdgeHead,
    EquivariantReadout,
    HeadContext,
    IrrepsHead,
    PolarizabilityHead,
    ScalarReadout,
    StructureHead,
    build_head,
    target_statistics,
    irrep_block,
)
from ._potential import OUTPUTS, Potential
from ._registry import (REPRESENTATIONS, Representation, build_model, families, hyperparameters, is_equivariant,
                        is_topological, register, training_defaults)


def _import_families() -> None:
    """Import every public module of this package: a family module registers itself on import,
    so a new family is one new file."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_families()

__all__ = [
    "OUTPUTS",
    "TARGETS",
    "Target",
    "declare",
    "register_target",
    "resolve_targets",
    "Potential",
    "Representation",
    "is_topological",
    "is_equivariant",
    "training_defaults",
    "REPRESENTATIONS",
    "build_model",
    "families",
    "hyperparameters",
    "register",
    "HEADS",
    "HeadContext",
    "build_head",
    "target_statistics",
    "AtomHead",
    "StructureHead",
    "EdgeHead",
    "EquivariantReadout",
    "DipoleHead",
    "IrrepsHead",
    "PolarizabilityHead",
    "ScalarReadout",
    "irrep_block",
]
