"""Rotations of 3D space: random rotations and conversions between parametrisations.

Euler angles follow e3nn's YXY convention:
``R(alpha, beta, gamma) = matrix_y(alpha) @ matrix_x(beta) @ matrix_y(gamma)``.
Quaternions are ``(w, x, y, z)`` with ``w`` the real part.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "matrix_x",
    "matrix_y",
    "matrix_z",
    "angles_to_matrix",
    "matrix_to_angles",
    "rand_angles",
    "rand_matrix",
    "identity_angles",
    "compose_angles",
    "inverse_angles",
    "axis_angle_to_matrix",
    "matrix_to_axis_angle",
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "angles_to_xyz",
    "xyz_to_angles",
]


def _check_matrix(R: torch.Tensor) -> None:
    if not isinstance(R, torch.Tensor) or R.ndim < 2 or R.shape[-2:] != (3, 3):
        shape = tuple(R.shape) if isinstance(R, torch.Tensor) else type(R).__name__
        raise ValueError(f"expected rotation matrices of shape (..., 3, 3), got {shape}")


def _check_last(x: torch.Tensor, n: int, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.shape[-1] != n:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected {what} of shape (..., {n}), got {shape}")


def _axis_matrix(angle: torch.Tensor, i: int, j: int) -> torch.Tensor:
    """Rotation by ``angle`` in the (i, j) plane, taking axis i towards axis j."""
    angle = torch.as_tensor(angle, dtype=torch.get_default_dtype()) if not torch.is_tensor(angle) else angle
    c, s = angle.cos(), angle.sin()
    R = torch.zeros(*angle.shape, 3, 3, dtype=c.dtype, device=c.device)
    k = 3 - i - j
    R[..., k, k] = 1
    R[..., i, i] = c
    R[..., j, j] = c
    R[..., j, i] = s
    R[..., i, j] = -s
    return R


def matrix_x(angle: torch.Tensor) -> torch.Tensor:
    """Rotation by ``angle`` about the x axis, shape ``(..., 3, 3)``.

    Examples
    --------
    >>> (matrix_x(torch.tensor(math.pi / 2)) @ torch.tensor([0.0, 1.0, 0.0])).round().tolist()
    [0.0, 0.0, 1.0]
    """
    return _axis_matrix(angle, 1, 2)


def matrix_y(angle: torch.Tensor) -> torch.Tensor:
    """Rotation by ``angle`` about the y axis (z towards x), shape ``(..., 3, 3)``."""
    return _axis_matrix(angle, 2, 0)


def matrix_z(angle: torch.Tensor) -> torch.Tensor:
    """Rotation by ``angle`` about the z axis (x towards y), shape ``(..., 3, 3)``."""
    return _axis_matrix(angle, 0, 1)


def angles_to_matrix(alpha, beta, gamma) -> torch.Tensor:
    """``matrix_y(alpha) @ matrix_x(beta) @ matrix_y(gamma)`` (broadcast), shape ``(..., 3, 3)``."""
    alpha, beta, gamma = torch.broadcast_tensors(*(torch.as_tensor(a) for a in (alpha, beta, gamma)))
    return matrix_y(alpha) @ matrix_x(beta) @ matrix_y(gamma)


def xyz_to_angles(xyz: torch.Tensor):
    """Angles ``(alpha, beta)`` with ``angles_to_xyz(alpha, beta)`` along ``xyz`` (need not be unit)."""
    _check_last(xyz, 3, "vectors")
    x, y, z = xyz.unbind(-1)
    beta = torch.atan2(torch.sqrt(x * x + z * z), y)
    alpha = torch.atan2(x, z)
    return alpha, beta


def angles_to_xyz(alpha, beta) -> torch.Tensor:
    """Unit vector ``matrix_y(alpha) @ matrix_x(beta) @ (0, 1, 0)``."""
    alpha, beta = torch.broadcast_tensors(torch.as_tensor(alpha), torch.as_tensor(beta))
    sb = beta.sin()
    return torch.stack([sb * alpha.sin(), beta.cos(), sb * alpha.cos()], dim=-1)


def matrix_to_angles(R: torch.Tensor):
    """YXY Euler angles ``(alpha, beta, gamma)`` of rotation matrices ``(..., 3, 3)`` (det +1).

    Examples
    --------
    >>> a, b, c = rand_angles(5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> R = angles_to_matrix(a, b, c)
    >>> torch.allclose(angles_to_matrix(*matrix_to_angles(R)), R)
    True
    """
    _check_matrix(R)
    alpha, beta = xyz_to_angles(R[..., :, 1])
    rest = angles_to_matrix(alpha, beta, torch.zeros_like(alpha)).transpose(-1, -2) @ R
    gamma = torch.atan2(rest[..., 0, 2], rest[..., 0, 0])
    return alpha, beta, gamma


def rand_angles(*shape, generator: torch.Generator | None = None, requires_grad: bool = False,
                dtype=None, device=None):
    """Euler angles of uniformly (Haar) distributed random rotations."""
    u = torch.rand(3, *shape, generator=generator, dtype=dtype, device=device)
    alpha = 2 * math.pi * u[0]
    gamma = 2 * math.pi * u[2]
    beta = torch.acos(2 * u[1] - 1)
    return tuple(a.detach().requires_grad_(requires_grad) for a in (alpha, beta, gamma))


def rand_matrix(*shape, generator: torch.Generator | None = None, requires_grad: bool = False,
                dtype=None, device=None) -> torch.Tensor:
    """Uniformly (Haar) distributed random rotation matrices, shape ``(*shape, 3, 3)``.

    Examples
    --------
    >>> R = rand_matrix(4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> R.shape, torch.allclose(R @ R.mT, torch.eye(3, dtype=torch.float64).expand(4, 3, 3))
    (torch.Size([4, 3, 3]), True)
    """
    # uniform unit quaternion from 4 Gaussians
    q = torch.randn(*shape, 4, generator=generator, dtype=dtype, device=device)
    R = quaternion_to_matrix(q)
    return R.detach().requires_grad_(requires_grad)


def identity_angles(*shape, requires_grad: bool = False, dtype=None, device=None):
    """Angles ``(0, 0, 0)`` of the given shape."""
    return tuple(torch.zeros(shape, dtype=dtype, device=device, requires_grad=requires_grad) for _ in range(3))


def compose_angles(a1, b1, c1, a2, b2, c2):
    """Angles of ``R(a1, b1, c1) @ R(a2, b2, c2)``."""
    return matrix_to_angles(angles_to_matrix(a1, b1, c1) @ angles_to_matrix(a2, b2, c2))


def inverse_angles(a, b, c):
    """Angles of the inverse rotation."""
    return -c, -b, -a


def axis_angle_to_matrix(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotation by ``angle`` about ``axis`` (``(..., 3)``, need not be unit), right-handed (Rodrigues).

    Examples
    --------
    >>> R = axis_angle_to_matrix(torch.tensor([0.0, 0.0, 2.0]), torch.tensor(math.pi / 2))
    >>> (R @ torch.tensor([1.0, 0.0, 0.0])).round().tolist()
    [0.0, 1.0, 0.0]
    """
    _check_last(axis, 3, "axes")
    angle = torch.as_tensor(angle, dtype=axis.dtype, device=axis.device)
    axis, angle = torch.broadcast_tensors(axis, angle[..., None])
    angle = angle[..., 0]
    n = axis / axis.norm(dim=-1, keepdim=True)
    x, y, z = n.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*x.shape, 3, 3)
    eye = torch.eye(3, dtype=axis.dtype, device=axis.device)
    s, c = angle.sin()[..., None, None], angle.cos()[..., None, None]
    return eye + s * K + (1 - c) * (K @ K)


def matrix_to_axis_angle(R: torch.Tensor):
    """``(axis, angle)`` of rotation matrices, unit axis, ``angle`` in ``[0, pi]``."""
    _check_matrix(R)
    q = matrix_to_quaternion(R)
    q = torch.where(q[..., :1] < 0, -q, q)
    v = q[..., 1:]
    vn = v.norm(dim=-1)
    angle = 2 * torch.atan2(vn, q[..., 0])
    axis = torch.where(vn[..., None] > 0, v / vn.clamp_min(torch.finfo(R.dtype).tiny)[..., None],
                       torch.tensor([0.0, 1.0, 0.0], dtype=R.dtype, device=R.device))
    return axis, angle


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices of quaternions ``(w, x, y, z)`` (normalised first), shape ``(..., 3, 3)``."""
    _check_last(q, 4, "quaternions")
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    R = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1)
    return R.reshape(*q.shape[:-1], 3, 3)


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``(w, x, y, z)`` with ``w >= 0`` of rotation matrices (stable for all angles)."""
    _check_matrix(R)
    m = R
    t = torch.stack([
        1 + m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2],
        1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
        1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
        1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2],
    ], dim=-1)
    # four candidate quaternions (each row scaled by 4 * its largest component); pick the best conditioned
    c = torch.stack([
        torch.stack([t[..., 0], m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], t[..., 1], m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], t[..., 2], m[..., 1, 2] + m[..., 2, 1]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], t[..., 3]], -1),
    ], dim=-2)
    best = t.argmax(dim=-1)
    q = torch.gather(c, -2, best[..., None, None].expand(*best.shape, 1, 4))[..., 0, :]
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)
