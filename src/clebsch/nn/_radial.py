"""Radial bases and smooth cutoff envelopes for interatomic distances."""

import math

import torch

__all__ = ["BesselBasis", "GaussianBasis", "PolynomialCutoff", "CosineCutoff", "radial_basis_of"]


class BesselBasis(torch.nn.Module):
    r"""Radial Bessel basis :math:`\sqrt{2/r_c}\,\sin(n\pi r/r_c)/r`, ``n = 1..num_basis``.

    Parameters
    ----------
    r_max : float
        Cutoff radius :math:`r_c`; must be positive.
    num_basis : int
        Number of basis functions.
    trainable : bool
        If ``True`` the frequencies :math:`n\pi` are trainable parameters.

    Examples
    --------
    >>> basis = BesselBasis(5.0, num_basis=8)
    >>> basis(torch.tensor([1.0, 2.5])).shape
    torch.Size([2, 8])
    """

    def __init__(self, r_max: float, num_basis: int = 8, trainable: bool = False) -> None:
        super().__init__()
        if not r_max > 0:
            raise ValueError(f"r_max must be positive, got {r_max}")
        if num_basis < 1:
            raise ValueError(f"num_basis must be >= 1, got {num_basis}")
        self.r_max = float(r_max)
        self.num_basis = int(num_basis)
        freq = torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype()) * math.pi
        if trainable:
            self.frequencies = torch.nn.Parameter(freq)
        else:
            self.register_buffer("frequencies", freq)
        self.prefactor = math.sqrt(2.0 / self.r_max)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """Evaluate the basis; ``r`` of shape ``(...)`` gives ``(..., num_basis)``."""
        r = r.unsqueeze(-1)
        return self.prefactor * torch.sin(self.frequencies.to(r.dtype) * r / self.r_max) / r

    def extra_repr(self) -> str:
        return f"r_max={self.r_max}, num_basis={self.num_basis}, trainable={isinstance(self.frequencies, torch.nn.Parameter)}"


class GaussianBasis(torch.nn.Module):
    r"""Gaussians :math:`\exp(-(r-\mu_k)^2 / 2\sigma^2)` with centres evenly spaced in ``[r_min, r_max]``.

    Parameters
    ----------
    r_max : float
        Last centre.
    num_basis : int
        Number of Gaussians.
    r_min : float
        First centre.
    width : float, optional
        :math:`\sigma`; defaults to the spacing between centres.

    Examples
    --------
    >>> GaussianBasis(4.0, num_basis=5)(torch.tensor([0.0, 1.0])).shape
    torch.Size([2, 5])
    """

    def __init__(self, r_max: float, num_basis: int = 16, r_min: float = 0.0, width: float | None = None) -> None:
        super().__init__()
        if not r_max > r_min:
            raise ValueError(f"r_max ({r_max}) must exceed r_min ({r_min})")
        if num_basis < 1:
            raise ValueError(f"num_basis must be >= 1, got {num_basis}")
        centres = torch.linspace(r_min, r_max, num_basis, dtype=torch.get_default_dtype())
        spacing = (r_max - r_min) / max(num_basis - 1, 1)
        self.width = float(width) if width is not None else spacing
        self.register_buffer("centres", centres)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """Evaluate the basis; ``r`` of shape ``(...)`` gives ``(..., num_basis)``."""
        d = (r.unsqueeze(-1) - self.centres.to(r.dtype)) / self.width
        return torch.exp(-0.5 * d * d)


class PolynomialCutoff(torch.nn.Module):
    r"""Polynomial envelope of degree ``p`` (NequIP/DimeNet).

    .. math:: f(x) = 1 - \tfrac{(p+1)(p+2)}{2} x^p + p(p+2) x^{p+1} - \tfrac{p(p+1)}{2} x^{p+2},
       \quad x = r / r_c

    and zero beyond :math:`r_c`. Value, first and second derivative vanish at
    :math:`r_c`.

    Examples
    --------
    >>> cut = PolynomialCutoff(5.0)
    >>> cut(torch.tensor([0.0, 5.0, 6.0])).tolist()
    [1.0, 0.0, 0.0]
    """

    def __init__(self, r_max: float, p: int = 6) -> None:
        super().__init__()
        if not r_max > 0:
            raise ValueError(f"r_max must be positive, got {r_max}")
        self.r_max = float(r_max)
        self.p = int(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        p = self.p
        x = r / self.r_max
        out = (
            1.0
            - (p + 1) * (p + 2) / 2 * x.pow(p)
            + p * (p + 2) * x.pow(p + 1)
            - p * (p + 1) / 2 * x.pow(p + 2)
        )
        return out * (x < 1.0).to(out.dtype)

    def extra_repr(self) -> str:
        return f"r_max={self.r_max}, p={self.p}"


class CosineCutoff(torch.nn.Module):
    r"""Cosine envelope :math:`\tfrac12(\cos(\pi r / r_c) + 1)` for :math:`r < r_c`, else 0.

    Examples
    --------
    >>> CosineCutoff(2.0)(torch.tensor([0.0, 1.0, 3.0])).tolist()
    [1.0, 0.5, 0.0]
    """

    def __init__(self, r_max: float) -> None:
        super().__init__()
        if not r_max > 0:
            raise ValueError(f"r_max must be positive, got {r_max}")
        self.r_max = float(r_max)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        out = 0.5 * (torch.cos(math.pi * r / self.r_max) + 1.0)
        return out * (r < self.r_max).to(out.dtype)

    def extra_repr(self) -> str:
        return f"r_max={self.r_max}"


def radial_basis_of(name: str, cutoff: float, num_basis: int) -> torch.nn.Module:
    """The radial basis called ``name`` (``"bessel"`` or ``"gaussian"``) on ``[0, cutoff]``.

    Examples
    --------
    >>> radial_basis_of("gaussian", 4.0, 6)(torch.tensor([1.0])).shape
    torch.Size([1, 6])
    """
    if name == "bessel":
        return BesselBasis(cutoff, num_basis)
    if name == "gaussian":
        return GaussianBasis(cutoff, num_basis)
    raise ValueError(f"radial_basis must be 'bessel' or 'gaussian', got {name!r}")
