import math

import pytest
import torch

from clebsch.o3 import (angles_to_matrix, axis_angle_to_matrix, compose_angles, identity_angles, matrix_to_angles,
                        matrix_to_axis_angle, matrix_to_quaternion, matrix_x, matrix_y, matrix_z, quaternion_to_matrix,
                        rand_angles, rand_matrix)

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_rand_matrix_is_rotation_and_seedable():
    R = rand_matrix(1000, generator=gen(0), dtype=F64)
    torch.testing.assert_close(R @ R.mT, torch.eye(3, dtype=F64).expand(1000, 3, 3))
    torch.testing.assert_close(torch.det(R), torch.ones(1000, dtype=F64))
    torch.testing.assert_close(rand_matrix(1000, generator=gen(0), dtype=F64), R)
    assert not torch.allclose(rand_matrix(1000, generator=gen(1), dtype=F64), R)


def test_rand_matrix_uniform():
    # Haar measure: E[R] = 0, E[R_ij^2] = 1/3, E[trace] = 0
    R = rand_matrix(100_000, generator=gen(2), dtype=F64)
    assert R.mean(0).abs().max() < 0.01
    assert (R.pow(2).mean(0) - 1 / 3).abs().max() < 0.01
    # rotation angle density (1 - cos t) / pi
    _, angle = matrix_to_axis_angle(R)
    assert abs(angle.mean().item() - (math.pi / 2 + 2 / math.pi)) < 0.01
    a, b, c = rand_angles(100_000, generator=gen(3), dtype=F64)
    assert (angles_to_matrix(a, b, c).mean(0)).abs().max() < 0.01


def test_axis_matrices():
    t = torch.tensor(0.3, dtype=F64)
    e = torch.eye(3, dtype=F64)
    torch.testing.assert_close(matrix_x(t) @ e[1], torch.stack([t * 0, t.cos(), t.sin()]))
    torch.testing.assert_close(matrix_y(t) @ e[2], torch.stack([t.sin(), t * 0, t.cos()]))
    torch.testing.assert_close(matrix_z(t) @ e[0], torch.stack([t.cos(), t.sin(), t * 0]))


def test_angles_roundtrip_and_e3nn():
    e3o3 = pytest.importorskip("e3nn.o3")
    a, b, c = rand_angles(100, generator=gen(4), dtype=F64)
    R = angles_to_matrix(a, b, c)
    torch.testing.assert_close(R, e3o3.angles_to_matrix(a, b, c))
    torch.testing.assert_close(angles_to_matrix(*matrix_to_angles(R)), R, atol=1e-12, rtol=0)
    # degenerate beta = 0 and pi
    for beta in (0.0, math.pi):
        R0 = angles_to_matrix(a[:5], torch.full((5,), beta, dtype=F64), c[:5])
        torch.testing.assert_close(angles_to_matrix(*matrix_to_angles(R0)), R0, atol=1e-12, rtol=0)
    torch.testing.assert_close(angles_to_matrix(*identity_angles(2, dtype=F64)), torch.eye(3, dtype=F64).expand(2, 3, 3))
    a2, b2, c2 = rand_angles(100, generator=gen(5), dtype=F64)
    torch.testing.assert_close(angles_to_matrix(*compose_angles(a, b, c, a2, b2, c2)),
                               R @ angles_to_matrix(a2, b2, c2), atol=1e-12, rtol=0)


def test_axis_angle_and_quaternion():
    e3o3 = pytest.importorskip("e3nn.o3")
    R = rand_matrix(200, generator=gen(6), dtype=F64)
    axis, angle = matrix_to_axis_angle(R)
    torch.testing.assert_close(axis_angle_to_matrix(axis, angle), R, atol=1e-12, rtol=0)
    torch.testing.assert_close(axis_angle_to_matrix(axis, angle), e3o3.axis_angle_to_matrix(axis, angle))
    q = matrix_to_quaternion(R)
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(200, dtype=F64))
    torch.testing.assert_close(quaternion_to_matrix(q), R, atol=1e-12, rtol=0)
    torch.testing.assert_close(quaternion_to_matrix(q), e3o3.quaternion_to_matrix(q))
    # half turns (angle = pi) are stable
    Rh = axis_angle_to_matrix(axis, torch.full((200,), math.pi, dtype=F64))
    torch.testing.assert_close(quaternion_to_matrix(matrix_to_quaternion(Rh)), Rh, atol=1e-12, rtol=0)
    torch.testing.assert_close(axis_angle_to_matrix(*matrix_to_axis_angle(Rh)), Rh, atol=1e-12, rtol=0)


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, 3\)"):
        matrix_to_angles(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        quaternion_to_matrix(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        axis_angle_to_matrix(torch.zeros(2, 4), torch.zeros(2))
