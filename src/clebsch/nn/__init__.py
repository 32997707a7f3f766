"""Equivariant layers: tensor products, linear maps, gates, norms, radial bases, scalar MLPs and neighbour sums."""

from ._activation import activation_parity, normalize2mom
from ._gate import Gate, NormActivation, gate_irreps, make_gate
from ._linear import Linear, SpeciesLinear
from ._message import Edges, edge_dot, message_sum
from ._mlp import ScalarMLP
from ._norm import BatchNorm, LayerNorm
from ._path import Path
from ._sparse import sparse_bilinear, sparse_trilinear_sum
from ._silu import SiLU, silu
from ._radial import BesselBasis, CosineCutoff, GaussianBasis, PolynomialCutoff, radial_basis_of
from ._tensor_product import (
    ChannelwiseTensorProduct,
    ElementwiseTensorProduct,
    FullTensorProduct,
    FullyConnectedTensorProduct,
    TensorProduct,
)

__all__ = [
    "Path",
    "TensorProduct",
    "FullyConnectedTensorProduct",
    "ChannelwiseTensorProduct",
    "ElementwiseTensorProduct",
    "FullTensorProduct",
    "Linear",
    "SpeciesLinear",
    "Gate",
    "NormActivation",
    "gate_irreps",
    "make_gate",
    "LayerNorm",
    "BatchNorm",
    "ScalarMLP",
    "normalize2mom",
    "activation_parity",
    "BesselBasis",
    "GaussianBasis",
    "PolynomialCutoff",
    "CosineCutoff",
    "radial_basis_of",
    "Edges",
    "message_sum",
    "edge_dot",
    "sparse_bilinear",
    "sparse_trilinear_sum",
    "silu",
    "SiLU",
]
