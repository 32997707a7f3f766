"""The mathematics of O(3): irreps, rotations, Wigner D and 3j, spherical harmonics.

Conventions are those of e3nn >= 0.5 (real basis, ``l = 1`` components
``(x, y, z)``, YXY Euler angles), so results compare directly.

Examples
--------
>>> from clebsch.o3 import Irreps, spherical_harmonics
>>> Irreps("2x0e + 1o").dim
5
"""

from ._cartesian import CartesianTensor, ReducedTensorProducts
from ._irreps import Irrep, Irreps, MulIr
from ._rotation import (
    angles_to_matrix,
    angles_to_xyz,
    axis_angle_to_matrix,
    compose_angles,
    identity_angles,
    inverse_angles,
    matrix_to_angles,
    matrix_to_axis_angle,
    matrix_to_quaternion,
    matrix_x,
    matrix_y,
    matrix_z,
    quaternion_to_matrix,
    rand_angles,
    rand_matrix,
    xyz_to_angles,
)
from ._spherical_harmonics import spherical_harmonics
from ._wigner import change_basis_real_to_complex, so3_generators, wigner_3j, wigner_D

__all__ = [
    "Irrep",
    "Irreps",
    "MulIr",
    "wigner_3j",
    "wigner_D",
    "so3_generators",
    "change_basis_real_to_complex",
    "spherical_harmonics",
    "ReducedTensorProducts",
    "CartesianTensor",
    "angles_to_matrix",
    "angles_to_xyz",
    "axis_angle_to_matrix",
    "compose_angles",
    "identity_angles",
    "inverse_angles",
    "matrix_to_angles",
    "matrix_to_axis_angle",
    "matrix_to_quaternion",
    "matrix_x",
    "matrix_y",
    "matrix_z",
    "quaternion_to_matrix",
    "rand_angles",
    "rand_matrix",
    "xyz_to_angles",
]
