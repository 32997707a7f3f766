"""Equivariant layers: tensor products, linear maps, gates, norms, radial bases and scalar MLPs."""

from ._activation import activation_parity, normalize2mom
from ._gate import Gate, NormActivation
from ._linear import Linear
from ._mlp import ScalarMLP
from ._norm import BatchNorm, LayerNorm
from ._path import Path
from ._radial import BesselBasis, CosineCutoff, GaussianBasis, PolynomialCutoff
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
    "Gate",
    "NormActivation",
    "LayerNorm",
    "BatchNorm",
    "ScalarMLP",
    "normalize2mom",
    "activation_parity",
    "BesselBasis",
    "GaussianBasis",
    "PolynomialCutoff",
    "CosineCutoff",
]
