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
channel. Because every ``U_nu`` is symmetric in its ``nu`` factors, the
polynomial is a linear map of the distinct *monomials* ``A_a1 ... A_anu``
(``a1 <= ... <= anu``; 9 + 45 + 165 = 219 of them for ``0e + 1o + 2e`` up to
degree 3, against 9 + 81 + 729 entries of the full tensors). At run time the
monomials of every atom and channel are built as products of contiguous blocks
(by index gathers while exporting, or beyond degree 3), the weights of
every element are folded into the coupling tensors (a small matmul,
independent of the number of atoms), and one batched matmul per channel gives
the output of every element, of which each atom keeps its own. No shape and no
branch depends on the values, so the module traces and exports.
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
        d = self.irreps_in.dim
        d_out_total = self.irreps_out.dim
        self.weights = torch.nn.ParameterList()
        # monomials of degree nu: sorted index tuples a_1 <= ... <= a_nu, each the product of one of
        # degree nu - 1 (left) and one component (right)
        monomials = [[(a,) for a in range(d)]]
        self._structured = correlation <= 3
        for nu in range(2, correlation + 1):
            if self._structured and nu == 2:  # by the last index b: x[:b+1] x[b] (see monomials())
                nxt = [(a, b) for b in range(d) for a in range(b + 1)]
            elif self._structured:  # by the middle index b: (degree 2 with last index b) x x[b:]
                nxt = [(a, b, c) for b in range(d) for a in range(b + 1) for c in range(b, d)]
            else:
                nxt = [t + (a,) for t in monomials[-1] for a in range(t[-1], d)]
            where = {t: i for i, t in enumerate(monomials[-1])}
            left = [where[t[:-1]] for t in nxt]
            right = [t[-1] for t in nxt]
            monomials.append(nxt)
            self.register_buffer(f"_left{nu}", torch.tensor(left, dtype=torch.long), persistent=False)
            self.register_buffer(f"_right{nu}", torch.tensor(right, dtype=torch.long), persistent=False)
        num_mono = sum(len(m) for m in monomials)
        rows = []  # per order: [P_nu, X, d_out], the coupling tensor on the monomials
        x0 = 0
        for nu in range(1, correlation + 1):
            # one tensor per order: all outputs side by side along M, block-diagonal in p
            blocks = []
            for mul_ir in self.irreps_out:
                if mul_ir.mul != 1:
                    raise ValueError(f"irreps_out needs one copy of each irrep per channel, got {irreps_out}")
                blocks.append(coupling_basis(self.irreps_in, mul_ir.ir, nu))
            num_paths = sum(b.shape[0] for b in blocks)
            u = torch.zeros(num_paths, d_out_total, *([d] * nu), dtype=torch.float64)
            p0 = 0
            for b, sl in zip(blocks, self.irreps_out.slices()):
                u[p0 : p0 + b.shape[0], sl] = b
                p0 += b.shape[0]
            # sum over all orderings of the factors = (multiplicity of the monomial) x (the sorted entry)
            mono = monomials[nu - 1]
            mult = torch.tensor([math.factorial(nu) / math.prod(math.factorial(t.count(a)) for a in set(t))
                                 for t in mono], dtype=torch.float64)
            flat = u.reshape(num_paths, d_out_total, d**nu)
            pos = torch.tensor([sum(a * d ** (nu - 1 - i) for i, a in enumerate(t)) for t in mono], dtype=torch.long)
            m = torch.zeros(num_paths, num_mono, d_out_total, dtype=torch.float64)
            m[:, x0 : x0 + len(mono)] = (flat[:, :, pos] * mult).transpose(1, 2)
            rows.append(m)
            x0 += len(mono)
            # weights W_nu[z, p, k], unit variance; the sum over p is normalised below
            self.weights.append(torch.nn.Parameter(torch.randn(num_species, num_paths, channels) / math.sqrt(max(num_paths, 1))))
        self.num_monomials = num_mono
        u = torch.cat(rows, dim=0)  # [P, X, d_out]
        self.register_buffer("_u", u.reshape(u.shape[0], -1).to(dtype), persistent=False)

    def monomials(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The monomials of degree 1, 2, ... ``correlation`` of the first axis of ``x`` ``[d, ...]``.

        Returns one tensor ``[X_nu, ...]`` per degree. The components run along the
        first axis so that every gather copies whole rows.
        """
        exporting = torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()
        if self._structured and not exporting:  # (slices of symbolic sizes give guards that fail to export)
            d = x.shape[0]
            if self.correlation == 1:
                return [x]
            by_last = [x.narrow(0, 0, b + 1) * x.narrow(0, b, 1) for b in range(d)]
            out = [x, torch.cat(by_last)]
            if self.correlation == 3:
                out.append(torch.cat([(by_last[b].unsqueeze(1) * x.narrow(0, b, d - b).unsqueeze(0)).flatten(0, 1)
                                      for b in range(d)]))
            return out
        out, prev = [x], x
        for nu in range(2, self.correlation + 1):
            prev = prev.index_select(0, getattr(self, f"_left{nu}")) * x.index_select(0, getattr(self, f"_right{nu}"))
            out.append(prev)
        return out

    def forward(self, a: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        n, k, d = a.shape
        z, m, x = self.num_species, self.irreps_out.dim, self.num_monomials
        w = torch.cat([w.to(a.dtype) for w in self.weights], dim=1)  # [Z, P, K]
        # the weights of every element folded into the coupling tensor: [K, Z * M, X]
        c = (w.permute(2, 0, 1).reshape(k * z, -1) @ self._u.to(a.dtype)).view(k, z, x, m)
        c = c.transpose(2, 3).reshape(k, z * m, x)
        out, x0 = None, 0
        for mono in self.monomials(a.permute(2, 1, 0).contiguous()):  # [X_nu, K, N] per degree
            # every element's polynomial of every atom: [K, Z * M, N]
            y = torch.bmm(c[:, :, x0 : x0 + mono.shape[0]], mono.transpose(0, 1))
            out = y if out is None else out + y
            x0 += mono.shape[0]
        sel = species.view(1, 1, 1, n).expand(k, 1, m, n)
        return out.view(k, z, m, n).gather(1, sel).view(k, m, n).permute(2, 0, 1)
