import pytest
import torch

from clebsch.testing import POSITIONS, assert_equivariant, equivariance_error, finite_difference_forces


def test_detects_non_equivariant():
    errs = equivariance_error(lambda x: x * torch.tensor([1.0, 2.0, 3.0], dtype=x.dtype), ["1o"], ["1o"])
    assert errs[("rotation", 0)] > 1e-3 and errs[("reflection", 0)] > 1e-3
    with pytest.raises(AssertionError, match="output 0 under rotation"):
        assert_equivariant(lambda x: x * torch.tensor([1.0, 2.0, 3.0], dtype=x.dtype), ["1o"], ["1o"])


def test_parity_detected():
    # a cross product of two vectors is a pseudovector: claiming 1o must fail under reflection only
    f = lambda a, b: torch.cross(a, b, dim=-1)  # noqa: E731
    errs = equivariance_error(f, ["1o", "1o"], ["1o"])
    assert errs[("rotation", 0)] < 1e-12 and errs[("reflection", 0)] > 1e-3
    assert_equivariant(f, ["1o", "1o"], ["1e"])


def test_positions_translation_and_permutation():
    def centre_and_distances(pos):
        d = (pos[:, None] - pos[None]).norm(dim=-1).sum(1, keepdim=True)
        return pos - pos.mean(0), d

    assert_equivariant(centre_and_distances, [POSITIONS], ["1o", "0e"], permutation=True)
    errs = equivariance_error(lambda p: p, [POSITIONS], ["1o"])
    assert errs[("rotation", 0)] > 1e-3  # translation is noticed
    errs = equivariance_error(lambda p: p.cumsum(0), [POSITIONS], [POSITIONS], permutation=True)
    assert errs[("permutation", 0)] > 1e-3


def test_finite_difference_forces_match_autograd():
    torch.manual_seed(0)
    pos = torch.randn(4, 3, dtype=torch.float64)

    def energy(p):
        d = (p[:, None] - p[None]).pow(2).sum(-1) + torch.eye(4, dtype=p.dtype)
        return (1.0 / d).sum() + p.pow(4).sum()

    p = pos.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(energy(p), p)
    fd = finite_difference_forces(energy, pos)
    assert (fd + g).abs().max() < 1e-6
