"""DimeNet++: directional message passing over edges, with angles between consecutive edges (invariant)."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..nn import PolynomialCutoff, silu
from ..o3 import Irreps
from ._registry import register

__all__ = ["DimeNetPlusPlus", "triplets", "triplet_cosines", "spherical_bessel_coefficients",
           "spherical_bessel_zeros", "RadialBesselBasis", "SphericalBasis"]


# ----------------------------------------------------------------------------- spherical Bessel functions
def spherical_bessel_coefficients(lmax: int) -> tuple[np.ndarray, np.ndarray]:
    r"""Coefficients of :math:`j_l(x) = A_l(1/x) \sin x + B_l(1/x) \cos x`, ``l = 0..lmax``.

    Returns ``A, B`` of shape ``[lmax + 1, lmax + 2]`` (column ``k`` multiplies
    :math:`x^{-k}`), from :math:`j_0 = \sin x / x`, :math:`j_1 = \sin x / x^2 - \cos x / x`
    and :math:`j_{l+1} = (2l+1) j_l / x - j_{l-1}`.

    >>> A, B = spherical_bessel_coefficients(2)
    >>> A[2].tolist(), B[2].tolist()
    ([0.0, -1.0, 0.0, 3.0], [0.0, 0.0, -3.0, 0.0])
    """
    A = np.zeros((lmax + 2, lmax + 2))
    B = np.zeros((lmax + 2, lmax + 2))
    A[0, 1] = 1.0
    A[1, 2], B[1, 1] = 1.0, -1.0
    for l in range(1, lmax):
        A[l + 1, 1:] = (2 * l + 1) * A[l, :-1]
        B[l + 1, 1:] = (2 * l + 1) * B[l, :-1]
        A[l + 1] -= A[l - 1]
        B[l + 1] -= B[l - 1]
    return A[: lmax + 1], B[: lmax + 1]


def _spherical_bessel_numpy(l: int, x: np.ndarray) -> np.ndarray:
    A, B = spherical_bessel_coefficients(l)
    u = 1.0 / x
    powers = u[..., None] ** np.arange(l + 2)
    return np.sin(x) * (powers @ A[l]) + np.cos(x) * (powers @ B[l])


def spherical_bessel_zeros(num_orders: int, num_zeros: int) -> np.ndarray:
    r"""The first ``num_zeros`` positive zeros :math:`z_{ln}` of :math:`j_l`, ``l < num_orders``: ``[num_orders, num_zeros]``.

    The zeros of :math:`j_{l}` interlace those of :math:`j_{l-1}` (starting from
    those of :math:`j_0`, :math:`n\pi`), so each lies in a known bracket, found
    by bisection to float64 precision.

    >>> z = spherical_bessel_zeros(2, 2)
    >>> bool(np.allclose(z[0], [np.pi, 2 * np.pi])), round(float(z[1, 0]), 6)
    (True, 4.493409)
    """
    count = num_zeros + num_orders - 1
    zeros = np.zeros((num_orders, num_zeros))
    previous = np.pi * np.arange(1, count + 1, dtype=np.float64)
    zeros[0] = previous[:num_zeros]
    for l in range(1, num_orders):
        lo, hi = previous[:-1].copy(), previous[1:].copy()
        f_lo = _spherical_bessel_numpy(l, lo)
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            f_mid = _spherical_bessel_numpy(l, mid)
            left = np.sign(f_mid) == np.sign(f_lo)
            lo, f_lo = np.where(left, mid, lo), np.where(left, f_mid, f_lo)
            hi = np.where(left, hi, mid)
            if np.all(hi - lo <= 4 * np.finfo(np.float64).eps * hi):
                break
        previous = 0.5 * (lo + hi)
        zeros[l] = previous[:num_zeros]
    return zeros


def _evaluate_bessel(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``j_l(x)`` for ``x`` of shape ``[..., L, n]``, order ``l`` along the second-last axis (Horner in 1/x)."""
    u = 1.0 / x
    a = torch.zeros_like(x) + A[:, -1, None]
    b = torch.zeros_like(x) + B[:, -1, None]
    for k in range(A.shape[1] - 2, -1, -1):
        a = a * u + A[:, k, None]
        b = b * u + B[:, k, None]
    return torch.sin(x) * a + torch.cos(x) * b


# ----------------------------------------------------------------------------- bases
class DimeNetEnvelope(PolynomialCutoff):
    r"""The polynomial envelope divided by the scaled distance, :math:`u(x)/x`, ``x = r / r_c``.

    ``exponent`` is DimeNet's: the polynomial has degree ``p = exponent + 1``
    (``exponent = 5`` gives ``p = 6``); :math:`u` and its first two derivatives vanish at the cutoff.
    """

    def __init__(self, cutoff: float, exponent: int):
        super().__init__(cutoff, p=exponent + 1)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return super().forward(r) * self.r_max / r


class RadialBesselBasis(torch.nn.Module):
    r"""Radial basis :math:`u(d/c) \sin(f_n d / c) / (d / c)`, frequencies :math:`f_n` trainable from :math:`n\pi`.

    The 0th-order spherical Bessel functions with zeros at the cutoff, times the
    polynomial envelope :math:`u` (DimeNet's radial basis; the constant
    normalisation is left to the next linear layer, as in the reference code).

    >>> basis = RadialBesselBasis(num_radial=6, cutoff=5.0)
    >>> basis(torch.tensor([1.0, 5.0])).shape, float(basis(torch.tensor([5.0])).detach().abs().max())
    (torch.Size([2, 6]), 0.0)
    """

    def __init__(self, num_radial: int, cutoff: float, envelope_exponent: int = 5):
        super().__init__()
        self.cutoff = float(cutoff)
        self.envelope = DimeNetEnvelope(cutoff, envelope_exponent)
        self.frequencies = torch.nn.Parameter(math.pi * torch.arange(1, num_radial + 1, dtype=torch.get_default_dtype()))

    def forward(self, distance: torch.Tensor) -> torch.Tensor:
        x = distance[:, None] / self.cutoff
        return self.envelope(distance)[:, None] * torch.sin(self.frequencies.to(x.dtype) * x)


class SphericalBasis(torch.nn.Module):
    r"""DimeNet's 2D spherical Fourier-Bessel basis, split into its radial and angular factors.

    .. math:: a_{ln}(d, \alpha) = \frac{\sqrt 2}{|j_{l+1}(z_{ln})|}\, j_l(z_{ln} d / c)\,
              \frac{u(d/c)}{d/c}\; Y_{l0}(\alpha)

    with :math:`z_{ln}` the n-th zero of :math:`j_l` and the zonal real spherical
    harmonic :math:`Y_{l0}(\alpha) = \sqrt{(2l+1)/4\pi}\, P_l(\cos\alpha)`.
    :meth:`radial` is per edge (``[E, num_spherical, num_radial]``) and
    :meth:`angular` per triplet (``[T, num_spherical]``); the basis of a triplet is
    their product is the basis of the triplet.

    >>> sbf = SphericalBasis(num_spherical=3, num_radial=4, cutoff=5.0)
    >>> sbf.radial(torch.tensor([1.0, 2.0])).shape, sbf.angular(torch.tensor([0.5])).shape
    (torch.Size([2, 3, 4]), torch.Size([1, 3]))
    """

    def __init__(self, num_spherical: int, num_radial: int, cutoff: float, envelope_exponent: int = 5):
        super().__init__()
        self.cutoff = float(cutoff)
        self.num_spherical = int(num_spherical)
        self.envelope = DimeNetEnvelope(cutoff, envelope_exponent)
        dtype = torch.get_default_dtype()
        zeros = spherical_bessel_zeros(num_spherical, num_radial)
        A, B = spherical_bessel_coefficients(num_spherical)
        next_order = np.stack([_spherical_bessel_numpy(l + 1, zeros[l]) for l in range(num_spherical)])
        self.register_buffer("zeros", torch.tensor(zeros, dtype=dtype))
        self.register_buffer("normalisation", torch.tensor(np.sqrt(2.0) / np.abs(next_order), dtype=dtype))
        self.register_buffer("coefficients_sin", torch.tensor(A[:num_spherical], dtype=dtype))
        self.register_buffer("coefficients_cos", torch.tensor(B[:num_spherical], dtype=dtype))
        l = np.arange(num_spherical)
        self.register_buffer("harmonic_norm", torch.tensor(np.sqrt((2 * l + 1) / (4 * np.pi)), dtype=dtype))

    def radial(self, distance: torch.Tensor) -> torch.Tensor:
        dtype = distance.dtype
        x = distance[:, None, None] / self.cutoff
        j = _evaluate_bessel(self.zeros.to(dtype) * x, self.coefficients_sin.to(dtype), self.coefficients_cos.to(dtype))
        return self.envelope(distance)[:, None, None] * self.normalisation.to(dtype) * j

    def angular(self, cosine: torch.Tensor) -> torch.Tensor:
        legendre = [torch.ones_like(cosine), cosine]
        for l in range(1, self.num_spherical - 1):
            legendre.append(((2 * l + 1) * cosine * legendre[l] - l * legendre[l - 1]) / (l + 1))
        return torch.stack(legendre[: self.num_spherical], dim=-1) * self.harmonic_norm.to(cosine.dtype)


# ----------------------------------------------------------------------------- triplets
def triplets(edge_index: torch.Tensor, edge_vectors: torch.Tensor, num_atoms: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The pairs of edges (k -> j, j -> i) that meet at j: ``(idx_kj, idx_ji)``, edge ids.

    Every edge into j's sender is paired with the edge, except the edge itself
    reversed (i -> j through the opposite cell shift, recognised by its vector
    being minus the edge's): other periodic images of i are distinct atoms and
    stay. ``edge_index[0]`` are senders, ``edge_index[1]`` receivers, and the
    vectors point from receiver to sender.

    >>> edge_index = torch.tensor([[1, 0, 2, 0], [0, 1, 0, 2]])
    >>> vectors = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]])
    >>> kj, ji = triplets(edge_index, vectors, 3)
    >>> sorted(zip(kj.tolist(), ji.tolist()))
    [(0, 3), (2, 1)]
    """
    sender, receiver = edge_index[0], edge_index[1]
    num_edges = sender.shape[0]
    arange = torch.arange(num_edges, device=sender.device)
    order = torch.argsort(receiver, stable=True)
    incoming = torch.zeros(num_atoms, dtype=torch.long, device=sender.device).index_add_(
        0, receiver, torch.ones_like(receiver))
    first_incoming = torch.cumsum(incoming, 0) - incoming
    per_edge = incoming[sender]  # candidate edges k -> j for each edge j -> i
    total = per_edge.sum().item()  # a symbolic size under torch.export
    torch._check(total >= 0)
    idx_ji = torch.repeat_interleave(arange, per_edge, output_size=total)
    start = torch.cumsum(per_edge, 0) - per_edge
    rank = torch.arange(total, device=sender.device) - torch.repeat_interleave(start, per_edge, output_size=total)
    idx_kj = order[first_incoming[sender[idx_ji]] + rank]
    with torch.no_grad():
        v_ji, v_kj = edge_vectors[idx_ji].detach(), edge_vectors[idx_kj].detach()
        length = v_ji.norm(dim=-1)
        reverse = (sender[idx_kj] == receiver[idx_ji]) & ((v_ji + v_kj).norm(dim=-1) <= 1e-4 * length)
        keep = torch.nonzero(~reverse).squeeze(-1)
    return idx_kj[keep], idx_ji[keep]


def triplet_cosines(edge_vectors: torch.Tensor, idx_kj: torch.Tensor, idx_ji: torch.Tensor) -> torch.Tensor:
    r"""Cosine of the angle between the directions j -> i and k -> j of each triplet.

    With the vectors pointing from receiver to sender, both directions are minus
    the edge vectors, so this is the cosine between the two edge vectors (``π``
    minus the bond angle k-j-i, DimeNet's convention). Smooth everywhere, even
    for collinear atoms.

    >>> v = torch.tensor([[1.0, 0, 0], [0, 2.0, 0]])
    >>> triplet_cosines(v, torch.tensor([1]), torch.tensor([0])).tolist()
    [0.0]
    """
    a, b = edge_vectors[idx_ji], edge_vectors[idx_kj]
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


# ----------------------------------------------------------------------------- blocks
def _glorot_orthogonal(weight: torch.Tensor, scale: float = 2.0) -> None:
    """Orthogonal initialisation rescaled to variance ``scale / (fan_in + fan_out)``."""
    with torch.no_grad():
        torch.nn.init.orthogonal_(weight)
        weight.mul_(math.sqrt(scale / (sum(weight.shape) * weight.var().clamp_min(1e-12))))


def _dense(n_in: int, n_out: int, bias: bool = True) -> torch.nn.Linear:
    layer = torch.nn.Linear(n_in, n_out, bias=bias)
    _glorot_orthogonal(layer.weight)
    if bias:
        torch.nn.init.zeros_(layer.bias)
    return layer


class Residual(torch.nn.Module):
    """``x + act(W2 act(W1 x))``."""

    def __init__(self, channels: int):
        super().__init__()
        self.first, self.second = _dense(channels, channels), _dense(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = silu
        return x + act(self.second(act(self.first(x))))


class Embedding(torch.nn.Module):
    """Initial edge messages ``m_ji = act(W [h_i, h_j, act(W_rbf e_ji)])`` from the two elements and the distance."""

    def __init__(self, num_species: int, num_radial: int, hidden_channels: int):
        super().__init__()
        self.species = torch.nn.Embedding(num_species, hidden_channels)
        torch.nn.init.uniform_(self.species.weight, -math.sqrt(3.0), math.sqrt(3.0))
        self.radial = torch.nn.Linear(num_radial, hidden_channels)
        self.mix = torch.nn.Linear(3 * hidden_channels, hidden_channels)

    def forward(self, species, sender, receiver, rbf):
        act = silu
        h = self.species(species).to(rbf.dtype)
        return act(self.mix(torch.cat([h[receiver], h[sender], act(self.radial(rbf))], dim=-1)))


class Interaction(torch.nn.Module):
    """One DimeNet++ interaction block: messages into ``j`` update ``m_ji`` through the angle at ``j``.

    The messages ``m_kj``, filtered by the radial basis (through a
    ``basis_emb_size`` bottleneck) and projected down to ``int_emb_size``, are
    multiplied per triplet by the filtered spherical basis, summed over ``k``,
    projected back up and added to ``m_ji``'s own transform; residual layers
    before and after a skip connection follow.
    """

    def __init__(self, hidden_channels, int_emb_size, basis_emb_size, num_spherical, num_radial,
                 num_before_skip, num_after_skip):
        super().__init__()
        self.rbf_down = _dense(num_radial, basis_emb_size, bias=False)
        self.rbf_up = _dense(basis_emb_size, hidden_channels, bias=False)
        self.sbf_down = _dense(num_spherical * num_radial, basis_emb_size, bias=False)
        self.sbf_up = _dense(basis_emb_size, int_emb_size, bias=False)
        self.kj = _dense(hidden_channels, hidden_channels)
        self.ji = _dense(hidden_channels, hidden_channels)
        self.down = _dense(hidden_channels, int_emb_size, bias=False)
        self.up = _dense(int_emb_size, hidden_channels, bias=False)
        self.before_skip = torch.nn.ModuleList(Residual(hidden_channels) for _ in range(num_before_skip))
        self.skip = _dense(hidden_channels, hidden_channels)
        self.after_skip = torch.nn.ModuleList(Residual(hidden_channels) for _ in range(num_after_skip))

    def forward(self, m, rbf, sbf, idx_kj, idx_ji):
        act = silu
        x_ji = act(self.ji(m))
        x_kj = act(self.down(act(self.kj(m)) * self.rbf_up(self.rbf_down(rbf))))
        messages = x_kj[idx_kj] * self.sbf_up(self.sbf_down(sbf))
        summed = torch.zeros(m.shape[0], messages.shape[1], dtype=m.dtype, device=m.device).index_add_(
            0, idx_ji, messages)
        h = x_ji + act(self.up(summed))
        for layer in self.before_skip:
            h = layer(h)
        h = act(self.skip(h)) + m
        for layer in self.after_skip:
            h = layer(h)
        return h


class Output(torch.nn.Module):
    """Per-atom output of one block: radially filtered messages summed into the receiver, up-projected, dense layers."""

    def __init__(self, num_radial, hidden_channels, out_emb_channels, num_output_layers):
        super().__init__()
        self.radial = _dense(num_radial, hidden_channels, bias=False)
        self.up = _dense(hidden_channels, out_emb_channels, bias=False)
        self.layers = torch.nn.ModuleList(_dense(out_emb_channels, out_emb_channels) for _ in range(num_output_layers))
        self.final = _dense(out_emb_channels, out_emb_channels, bias=False)

    def forward(self, m, rbf, receiver, num_atoms):
        x = self.radial(rbf) * m
        x = torch.zeros(num_atoms, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, receiver, x)
        x = self.up(x)
        for layer in self.layers:
            x = silu(layer(x))
        return self.final(x)


@register("dimenet")
class DimeNetPlusPlus(torch.nn.Module):
    r"""DimeNet++ (Gasteiger et al., arXiv:2011.14115; DimeNet: Gasteiger, Groß and Günnemann, ICLR 2020).

    Messages live on directed edges j -> i. They start from the two elements and
    a radial Bessel basis of the distance. Each interaction block updates
    ``m_ji`` from the messages ``m_kj`` of the edges arriving at ``j``, each
    filtered by a spherical Fourier-Bessel basis of the distance ``d_kj`` and of
    the angle between the directions ``k -> j`` and ``j -> i`` -- directional
    information from invariant inputs only. After the embedding and after each
    interaction block an output block sums the radially filtered messages into
    their receiving atom; the representation is the sum of these per-atom
    outputs (``out_emb_channels x 0e``), on which the energy head sits.

    Parameters
    ----------
    num_species : int
        Number of elements.
    cutoff : float
        Radial cutoff, Å.
    num_layers : int
        Interaction blocks (``num_blocks`` in the paper's code).
    hidden_channels : int
        Size of the edge messages (``emb_size``).
    int_emb_size : int
        Size of the triplet messages (the down-projection).
    basis_emb_size : int
        Bottleneck of the basis filters.
    out_emb_channels : int
        Size of the output blocks' features (the representation's width).
    num_spherical, num_radial : int
        Orders ``l`` of the spherical basis and radial functions per order.
    envelope_exponent : int
        DimeNet's exponent: the envelope polynomial has degree ``envelope_exponent + 1``.
    num_before_skip, num_after_skip : int
        Residual layers before and after the skip connection of each interaction block.
    num_output_layers : int
        Dense layers of each output block.

    Trained with a learning rate of 0.001 unless the config sets one (the paper's; the
    trainer's default 0.01 breaks it in the first Adam steps: the outputs saturate and
    the forces become exactly zero).

    Examples
    --------
    >>> net = DimeNetPlusPlus(2, 4.0, num_layers=1, hidden_channels=8, int_emb_size=4, basis_emb_size=2,
    ...                       out_emb_channels=8, num_spherical=3, num_radial=3)
    >>> net.irreps_out
    8x0e
    >>> species = torch.tensor([0, 1, 1])
    >>> edge_index = torch.tensor([[1, 0, 2, 0], [0, 1, 0, 2]])
    >>> vectors = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.2, 0], [0, -1.2, 0]])
    >>> net(species, edge_index, vectors).shape
    torch.Size([3, 8])
    """

    training_defaults = {"optimizer.lr": 1e-3}

    limits = {"hidden_channels": (1, 4096), "int_emb_size": (1, 4096), "basis_emb_size": (1, 4096),
              "out_emb_channels": (1, 4096), "num_spherical": (1, 12), "num_radial": (1, 64),
              "envelope_exponent": (1, 16), "num_before_skip": (0, 16), "num_after_skip": (0, 16),
              "num_output_layers": (0, 16)}

    def __init__(
        self,
        num_species: int,
        cutoff: float,
        *,
        num_layers: int = 3,
        hidden_channels: int = 64,
        int_emb_size: int = 32,
        basis_emb_size: int = 8,
        out_emb_channels: int = 128,
        num_spherical: int = 7,
        num_radial: int = 6,
        envelope_exponent: int = 5,
        num_before_skip: int = 1,
        num_after_skip: int = 2,
        num_output_layers: int = 3,
    ):
        super().__init__()
        self.irreps_out = Irreps(f"{out_emb_channels}x0e")
        self.rbf = RadialBesselBasis(num_radial, cutoff, envelope_exponent)
        self.sbf = SphericalBasis(num_spherical, num_radial, cutoff, envelope_exponent)
        self.embedding = Embedding(num_species, num_radial, hidden_channels)
        self.interactions = torch.nn.ModuleList(
            Interaction(hidden_channels, int_emb_size, basis_emb_size, num_spherical, num_radial,
                        num_before_skip, num_after_skip)
            for _ in range(num_layers)
        )
        self.outputs = torch.nn.ModuleList(
            Output(num_radial, hidden_channels, out_emb_channels, num_output_layers) for _ in range(num_layers + 1)
        )

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        sender, receiver = edge_index[0], edge_index[1]
        num_atoms = species.shape[0]
        idx_kj, idx_ji = triplets(edge_index, edge_vectors, num_atoms)
        distance = torch.linalg.norm(edge_vectors, dim=-1)
        rbf = self.rbf(distance)
        angular = self.sbf.angular(triplet_cosines(edge_vectors, idx_kj, idx_ji))
        sbf = (self.sbf.radial(distance)[idx_kj] * angular[:, :, None]).flatten(1)  # [T, num_spherical * num_radial]
        m = self.embedding(species, sender, receiver, rbf)
        out = self.outputs[0](m, rbf, receiver, num_atoms)
        for interaction, output in zip(self.interactions, self.outputs[1:]):
            m = interaction(m, rbf, sbf, idx_kj, idx_ji)
            out = out + output(m, rbf, receiver, num_atoms)
        return out
