"""MACE's symmetric contraction: polynomials of the atomic basis, coupled to irreps.

For every atom ``i`` and channel ``k`` the atomic basis ``A_ik`` is one copy of
each irrep of ``irreps_in`` (e.g. ``0e + 1o + 2e``), a vector of dimension
``d``. The product basis of body order ``nu + 1`` is the symmetric power
``A_ik ⊗ ... ⊗ A_ik`` (``nu`` factors). Its equivariant projections onto an
output irrep ``L`` are the *generalised Clebsch-Gordan* tensors
``U_nu[p, M, a_1, ..., a_nu]`` (``p`` indexes independent couplings), built here
once from the Wigner 3j symbols by coupling the factors one after the other,
symmetrising over the order of the factors and keeping an orthonormal basis of
what remains (Batatia et al., "MACE", NeurIPS 2022, eqs. 10-11).

At run time the message is

    B_ikLM = sum_nu sum_p W_nu[z_i, p, k] sum_{a_1..a_nu} U_nu[p, M, a_1..a_nu] A_ik,a_1 ... A_ik,a_nu

with learnable weights per element ``z_i``, correlation order ``nu`` and
channel. It is evaluated with Horner's scheme over the precomputed buffers,
highest order first: contract ``U_3`` with ``A`` once, add ``U_2``, contract,
add ``U_1``, contract. The weights are folded into the tensors per element, so
the cost per atom does not grow with the number of couplings.
"""

from __future__ import annotations

import itertools
import math

import torch

from ..o3 import Irrep, Irreps, wigner_3j


def _embeddings(irreps_in: Irreps) -> list[tuple[Irrep, torch.Tensor]]:
    """``(ir, E)`` per irrep of ``irreps_in``; ``E`` [d, 2l+1] places the irrep in the flat vector."""
    d = irreps_in.dim
    out = []
    for mul_ir, sl in zip(irreps_in, irreps_in.slices()):
        if mul_ir.mul != 1:
            raise ValueError(f"the atomic basis needs one copy of each irrep per channel, got {irreps_in}")
        e = torch.zeros(d, mul_ir.ir.dim, dtype=torch.float64)
        e[sl, :] = torch.eye(mul_ir.ir.dim, dtype=torch.float64)
        out.append((mul_ir.ir, e))
    return out


def coupling_basis(irreps_in, ir_out, nu: int) -> torch.Tensor:
    """Generalised Clebsch-Gordan tensors from ``Sym^nu(irreps_in)`` to ``ir_out``.

    Parameters
    ----------
    irreps_in : Irreps
        One copy of each irrep of the atomic basis (dimension ``d``).
    ir_out : Irrep
        Target irrep ``L``.
    nu : int
        Number of factors (correlation order).

    Returns
    -------
    torch.Tensor
        ``[P, 2L+1, d, ..., d]`` (``nu`` axes of size ``d``), float64: an
        orthonormal basis (as flattened tensors, scaled by ``sqrt(2L+1)``) of
        the equivariant maps, symmetric in the ``nu`` factors. ``P`` may be 0.

    Examples
    --------
    >>> coupling_basis(Irreps("0e + 1o"), Irrep("0e"), 2).shape   # 1 and |r|^2
    torch.Size([2, 1, 4, 4])
    >>> coupling_basis(Irreps("0e + 1o"), Irrep("1e"), 2).shape   # a x a = 0
    torch.Size([0, 3, 4, 4])
    """
    irreps_in = Irreps(irreps_in)
    ir_out = Irrep(ir_out)
    d = irreps_in.dim
    emb = _embeddings(irreps_in)
    lmax_mid = max(ir.l for ir, _ in emb) + ir_out.l
    # partial couplings: tensors [d, ..., d, 2l+1] with their irrep
    partial = [(ir, e) for ir, e in emb]
    for step in range(1, nu):
        last = step == nu - 1
        new = []
        for ir12, t in partial:
            for ir3, e3 in emb:
                for ir in ir12 * ir3:
                    if (last and ir != ir_out) or ir.l > lmax_mid:
                        continue
                    c = wigner_3j(ir12.l, ir3.l, ir.l, dtype=torch.float64) * math.sqrt(ir.dim)
                    # t[..., m12] e3[a, m3] c[m12, m3, M] -> [..., a, M]
                    new.append((ir, torch.einsum("...i,aj,ijk->...ak", t, e3, c)))
        partial = new
    tensors = [t for ir, t in partial if ir == ir_out]
    if not tensors:
        return torch.zeros(0, ir_out.dim, *([d] * nu), dtype=torch.float64)
    stack = torch.stack(tensors)  # [P, d..., M]
    # symmetrise over the order of the factors
    perms = list(itertools.permutations(range(1, nu + 1)))
    stack = sum(stack.permute(0, *p, nu + 1) for p in perms) / len(perms)
    flat = stack.reshape(stack.shape[0], -1)
    _, s, vh = torch.linalg.svd(flat, full_matrices=False)
    rank = int((s > 1e-9 * max(float(s[0]), 1.0)).sum())
    basis = vh[:rank].reshape(rank, *([d] * nu), ir_out.dim)
    basis = basis.permute(0, nu + 1, *range(1, nu + 1)) * math.sqrt(ir_out.dim)
    return basis.contiguous()


class SymmetricContraction(torch.nn.Module):
    """Element-dependent polynomial of the atomic basis up to degree ``correlation``.

    Parameters
    ----------
    irreps_in : Irreps
        Irreps of one channel of the atomic basis, one copy each (``0e+1o+2e``).
    irreps_out : Irreps
        Irreps of one channel of the output, one copy each.
    channels : int
        Number of channels ``K``; the contraction is channel-wise.
    correlation : int
        Highest polynomial degree ``nu`` (body order ``nu + 1``).
    num_species : int
        Number of elements; each has its own weights.

    Input ``A`` is ``[N, K, d_in]`` and ``species`` ``[N]``; the output is
    ``[N, K, d_out]`` laid out like ``irreps_out`` per channel.
    """

    def __init__(self, irreps_in, irreps_out, channels: int, correlation: int, num_species: int):
        super().__init__()
        self.irreps_in = Irreps(irreps_in)
        self.irreps_out = Irreps(irreps_out)
        self.channels = channels
        self.correlation = correlation
        self.num_species = num_species
        if correlation < 1:
            raise ValueError(f"correlation must be >= 1, got {correlation}")
        dtype = torch.get_default_dtype()
        self.weights = torch.nn.ParameterList()
        self._layout = []  # (output index, nu) -> index into self.weights or -1
        d_out_total = self.irreps_out.dim
        for nu in range(1, correlation + 1):
            # one buffer per order: all outputs side by side along M, block-diagonal in p
            blocks = []
            for i, mul_ir in enumerate(self.irreps_out):
                if mul_ir.mul != 1:
                    raise ValueError(f"irreps_out needs one copy of each irrep per channel, got {irreps_out}")
                blocks.append(coupling_basis(self.irreps_in, mul_ir.ir, nu))
            num_paths = sum(b.shape[0] for b in blocks)
            d = self.irreps_in.dim
            u = torch.zeros(num_paths, d_out_total, *([d] * nu), dtype=torch.float64)
            p0 = 0
            for b, sl in zip(blocks, self.irreps_out.slices()):
                u[p0 : p0 + b.shape[0], sl] = b
                p0 += b.shape[0]
            self.register_buffer(f"u{nu}", u.to(dtype), persistent=False)
            # weights W_nu[z, p, k], unit variance; the sum over p is normalised below
            self.weights.append(torch.nn.Parameter(torch.randn(num_species, num_paths, channels) / math.sqrt(max(num_paths, 1))))

    def _contract(self, x: torch.Tensor, z: int) -> torch.Tensor:
        """The polynomial of element ``z`` at every row of ``x`` ``[n, K, d]`` -> ``[n, K, d_out]``."""
        letters = "bcdefg"
        t = None
        for nu in range(self.correlation, 0, -1):
            u = getattr(self, f"u{nu}").to(x.dtype)
            w = self.weights[nu - 1][z].to(x.dtype)  # [P, K]
            ax = letters[:nu]
            # fold the weights of this element into the coupling tensor: [K, M, d^nu]
            c = torch.einsum(f"pm{ax},pk->km{ax}", u, w)
            # contract the last factor with A: [n, K, M, d^(nu-1)]
            if t is None:
                t = torch.einsum(f"km{ax},nk{ax[-1]}->nkm{ax[:-1]}", c, x)
            else:
                t = torch.einsum(f"nkm{ax},nk{ax[-1]}->nkm{ax[:-1]}", t + c, x)
        return t

    def forward(self, a: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        n, k, d = a.shape
        out = a.new_zeros(n, k, self.irreps_out.dim)
        if torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing():
            # shapes must not depend on values: every atom through every element's polynomial, then select
            for z in range(self.num_species):
                out = torch.where((species == z)[:, None, None], self._contract(a, z), out)
            return out
        for z in range(self.num_species):
            idx = (species == z).nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            out = out.index_copy(0, idx, self._contract(a.index_select(0, idx), z))
        return out
