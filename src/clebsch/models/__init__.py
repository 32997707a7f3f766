"""Model families behind one contract: ``model(graph) -> dict`` of named tensors.

Every family is a *representation* (per-atom features) wrapped by a
:class:`Potential` that adds output heads and the autograd responses
(forces, stress). Build any of them from a plain dict::

    model = build_model({"name": "nequip", "species": ["H", "C", "O"], "cutoff": 5.0})
"""

from ._heads import DipoleHead, IrrepsHead, PolarizabilityHead, ScalarReadout, irrep_block
from ._potential import OUTPUTS, Potential
from ._registry import REPRESENTATIONS, build_model, hyperparameters, register
from . import nequip  # noqa: F401
from . import mace  # noqa: F401
from . import segnn  # noqa: F401
from . import schnet, egnn, painn  # noqa: F401  (registers the families)

__all__ = [
    "OUTPUTS",
    "Potential",
    "REPRESENTATIONS",
    "build_model",
    "hyperparameters",
    "register",
    "DipoleHead",
    "IrrepsHead",
    "PolarizabilityHead",
    "ScalarReadout",
    "irrep_block",
]
