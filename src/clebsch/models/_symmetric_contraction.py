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
degree 3, against 9 + 81 + 729 entries of the full tensors). The monomials of
the highest degree are never formed: with ``f = (1, A_0, ..., A_{d-1})``,

    B_ikM = sum_j f_j H_ikMj,    H_ikMj = sum_t c_kMjt(z_i) A_ik,t

where ``t`` runs over the monomials of degree 1 to ``correlation - 1``,
``H[:, :, 0]`` holds the terms of those degrees and ``H[:, :, j]`` the terms of
the highest degree whose last factor is ``A_{j-1}``. At run time the monomials
are built degree by degree, each by two index gathers and one product (no
slices or concatenations, whose second derivatives would fill zero tensors of
the full size). The weights are folded into the coupling tensors per element (a
small matmul, independent of the number of atoms), and the atoms are grouped by
element: one batched matmul per element present, so the cost per atom does not
grow with the number of elements the model knows. While tracing or exporting,
where shapes must not depend on the values, and for a few atoms of a few
elements, where grouping costs more than it saves, the polynomial of every
element is computed for every atom (on all the monomials, a single matmul) and
each atom keeps its own: the same numbers.

On the CPU (not traced, a C compiler at hand) neither runs: C kernels
(:mod:`._fused_contraction`) compute every atom's polynomial with its own
element's coefficients, and its first and second derivatives, each in one pass
over the atoms (``SymmetricContraction.fused = False`` turns them off).
"""

from __future__ import annotations

import itertools
import math

import torch

from ..o3 import Irrep, Irreps, wigner_3j
from ._fused_contraction import CB, ContractionSpec, contraction_available, fused_contraction


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

    Examples
    --------
    >>> sc = SymmetricContraction("0e + 1o", "0e + 1o", channels=4, correlation=3, num_species=5)
    >>> sc(torch.randn(6, 4, 4), torch.tensor([0, 4, 4, 1, 0, 2])).shape
    torch.Size([6, 4, 4])
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
        m_out = self.irreps_out.dim
        self.weights = torch.nn.ParameterList()
        # the monomials that are formed, degrees 1 .. correlation - 1, as sorted index tuples. Rows of the
        # factor table f are [1, A_0, ..., A_{d-1}]; each step multiplies every monomial built so far by 1 and
        # appends each monomial of the next degree as (one of the last degree) x (one component).
        formed = [(a,) for a in range(d)]
        for step in range(2, correlation):
            where = {t: i for i, t in enumerate(formed)}
            new = [t + (c,) for t in formed if len(t) == step - 1 for c in range(t[-1], d)]
            left = list(range(len(formed))) + [where[t[:-1]] for t in new]
            right = [0] * len(formed) + [t[-1] + 1 for t in new]
            formed = formed + new
            self.register_buffer(f"_left{step}", torch.tensor(left, dtype=torch.long), persistent=False)
            self.register_buffer(f"_right{step}", torch.tensor(right, dtype=torch.long), persistent=False)
        self.num_monomials = len(formed) if correlation > 1 else d
        where = {t: i for i, t in enumerate(formed)}
        # the monomials of the highest degree, formed only by forward_all_species: (formed) x (component)
        top = [t + (c,) for t in formed if len(t) == correlation - 1 for c in range(t[-1], d)] if correlation > 1 else []
        self.register_buffer("_left_top", torch.tensor([where[t[:-1]] for t in top], dtype=torch.long), persistent=False)
        self.register_buffer("_right_top", torch.tensor([t[-1] + 1 for t in top], dtype=torch.long), persistent=False)
        where_all = {**where, **{t: len(formed) + i for i, t in enumerate(top)}}
        num_all = self.num_monomials + len(top)
        # every monomial (the columns of _u_all) as a product of two earlier ones, for the fused kernels
        rest = (formed + top)[d:]
        self._spec = ContractionSpec(d, [where_all[t[:-1]] for t in rest], [t[-1] for t in rest])
        # coupling tensor [P, M, J, X]: J = 1 + d factors (J = 1 for correlation 1), X = formed monomials
        num_j = 1 + d if correlation > 1 else 1
        rows, rows_all = [], []
        for nu in range(1, correlation + 1):
            blocks = []
            for mul_ir in self.irreps_out:
                if mul_ir.mul != 1:
                    raise ValueError(f"irreps_out needs one copy of each irrep per channel, got {irreps_out}")
                blocks.append(coupling_basis(self.irreps_in, mul_ir.ir, nu))
            num_paths = sum(b.shape[0] for b in blocks)
            u = torch.zeros(num_paths, m_out, *([d] * nu), dtype=torch.float64)
            p0 = 0
            for b, sl in zip(blocks, self.irreps_out.slices()):
                u[p0 : p0 + b.shape[0], sl] = b
                p0 += b.shape[0]
            # sum over all orderings of the factors = (multiplicity of the monomial) x (the sorted entry)
            mono = list(itertools.combinations_with_replacement(range(d), nu))
            mult = torch.tensor([math.factorial(nu) / math.prod(math.factorial(t.count(a)) for a in set(t))
                                 for t in mono], dtype=torch.float64)
            pos = torch.tensor([sum(a * d ** (nu - 1 - i) for i, a in enumerate(t)) for t in mono], dtype=torch.long)
            coef = u.reshape(num_paths, m_out, d**nu)[:, :, pos] * mult  # [P_nu, M, monomials of degree nu]
            m = torch.zeros(num_paths, m_out, num_j, self.num_monomials, dtype=torch.float64)
            m_all = torch.zeros(num_paths, m_out, num_all, dtype=torch.float64)
            m_all[:, :, [where_all[t] for t in mono]] = coef
            rows_all.append(m_all)
            for i, t in enumerate(mono):
                if nu < correlation:  # formed: the j = 0 term
                    m[:, :, 0, where[t]] = coef[:, :, i]
                elif nu == 1:  # correlation 1: the monomials are the components
                    m[:, :, 0, t[0]] = coef[:, :, i]
                else:  # highest degree: f_{1 + last factor} times a formed monomial
                    m[:, :, 1 + t[-1], where[t[:-1]]] = coef[:, :, i]
            rows.append(m)
            # weights W_nu[z, p, k], unit variance; the sum over p is normalised below
            self.weights.append(torch.nn.Parameter(torch.randn(num_species, num_paths, channels) / math.sqrt(max(num_paths, 1))))
        self._num_j = num_j
        u = torch.cat(rows, dim=0)  # [P, M, J, X]
        self.register_buffer("_u", u.reshape(u.shape[0], -1).to(dtype), persistent=False)
        # the first output irrep alone (the 0e of an energy model's last layer): its columns M, every path
        # (those of the other outputs are zero there)
        first = self.irreps_out.slices()[0] if len(self.irreps_out) else slice(0, 0)
        self.first_dim = first.stop - first.start
        self.register_buffer("_u_first", u[:, first].reshape(u.shape[0], -1).to(dtype), persistent=False)
        u = torch.cat(rows_all, dim=0)  # [P, M, X + top]: every monomial, for forward_all_species
        self.register_buffer("_u_all", u.reshape(u.shape[0], -1).to(dtype), persistent=False)
        self.register_buffer("_u_all_first", u[:, first].reshape(u.shape[0], -1).to(dtype), persistent=False)

    def monomials(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """The monomials of degree 1 to ``correlation - 1`` of ``x`` ``[K, d, N]``, with ``f = [1, x]`` ``[K, 1 + d, N]``.

        Returns ``[K, num_monomials, N]``, degree by degree. Gathers along the middle
        axis copy whole rows of ``N`` values.
        """
        out = x
        for step in range(2, self.correlation):
            out = out.index_select(1, getattr(self, f"_left{step}")) * f.index_select(1, getattr(self, f"_right{step}"))
        return out

    def coupling(self, weights: torch.Tensor, first_only: bool = False) -> torch.Tensor:
        """The coupling tensors with the weights ``[Z', P, K]`` of ``Z'`` elements folded in: ``[Z', K, M * J, X]``
        (``M`` the first output irrep's dimension with ``first_only``)."""
        z, p, k = weights.shape
        u, m = (self._u_first, self.first_dim) if first_only else (self._u, self.irreps_out.dim)
        c = weights.transpose(1, 2).reshape(z * k, p) @ u.to(weights.dtype)
        return c.view(z, k, m * self._num_j, self.num_monomials)

    def _inputs(self, a: torch.Tensor) -> tuple:
        """``[N, K, d]`` -> (factor table ``[K, J, N]`` or ``None``, formed monomials ``[K, X, N]``)."""
        x = a.permute(1, 2, 0)
        if self.correlation == 1:
            return None, x
        f = torch.cat([torch.ones_like(x[:, :1]), x], dim=1)
        return f, self.monomials(x, f)

    def _finish(self, h: torch.Tensor, f: torch.Tensor | None) -> torch.Tensor:
        """``H`` ``[K, M * J, n]`` and the factors ``[K, J, n]`` -> ``B`` ``[K, M, n]``."""
        if f is None:
            return h
        k, _, n = h.shape
        return (h.view(k, -1, self._num_j, n) * f.unsqueeze(1)).sum(2)

    #: below this many (atoms x elements known), computing every element's polynomial is cheaper
    #: than grouping the atoms (measured on CPU, float32, ``0e+1o+2e``, 32 channels, correlation 3)
    grouping_threshold = 256

    def forward(self, a: torch.Tensor, species: torch.Tensor, first_only: bool = False) -> torch.Tensor:
        """``A`` ``[N, K, d_in]`` -> ``[N, K, d_out]``; with ``first_only``, only the first output irrep
        ``[N, K, d_first]`` (the others are not computed)."""
        exporting = torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()
        if not exporting and self.fused and contraction_available(a, *self.weights, channels=self.channels):
            return self.forward_fused(a, species, first_only)
        if exporting or a.shape[0] * self.num_species < self.grouping_threshold:
            return self.forward_all_species(a, species, first_only)
        return self.forward_grouped(a, species, first_only)

    #: whether the C kernels (:mod:`._fused_contraction`) compute the contraction where they can
    fused = True

    def forward_fused(self, a: torch.Tensor, species: torch.Tensor, first_only: bool = False) -> torch.Tensor:
        """The contraction by the C kernels: every atom's polynomial with its own element's coefficients.

        The weights of the elements present are folded into the coefficients of every monomial
        ``[Z', M, monomials, K]`` (a matmul in PyTorch); the kernels then make one pass over the atoms
        for the contraction and one for each of its derivatives.
        """
        n, k, d = a.shape
        m = self.first_dim if first_only else self.irreps_out.dim
        if n == 0:
            return a.new_zeros(0, k, m)
        w = torch.cat([w.to(a.dtype) for w in self.weights], dim=1)  # [Z, P, K]
        counts = torch.bincount(species, minlength=self.num_species)  # (negative indices raise here)
        if counts.numel() > self.num_species:  # the kernels would read past the coefficients
            raise IndexError(f"species index {int(species.max())} out of range: the contraction knows "
                             f"{self.num_species} element(s)")
        present = torch.nonzero(counts).flatten()
        if present.numel() < self.num_species:  # fold the weights of the elements present only
            w = w.index_select(0, present)
            lookup = torch.zeros(self.num_species, dtype=torch.long, device=species.device)
            lookup[present] = torch.arange(present.numel(), device=species.device)
            species = lookup.index_select(0, species)
        kp = -(-k // CB) * CB
        if kp != k:  # the kernels read the channels in vectors of CB
            w = torch.nn.functional.pad(w, (0, kp - k))
        u = self._u_all_first if first_only else self._u_all  # [P, M * monomials]
        c = torch.matmul(u.t().to(a.dtype), w)  # [Z', M * monomials, Kp]: no permutation, forward or backward
        return fused_contraction(self._spec, a, c.view(w.shape[0], m, self._spec.NT, kp), species)

    def forward_grouped(self, a: torch.Tensor, species: torch.Tensor, first_only: bool = False) -> torch.Tensor:
        """The contraction with the atoms grouped by element: one matmul per element present.

        The atoms are sorted by element (a stable sort), the polynomial of each group
        uses its own element's coupling tensor, and the results are put back in the
        order of the atoms. The group sizes are read on the host.
        """
        n, k, d = a.shape
        if n == 0:
            return a.new_zeros(0, k, self.first_dim if first_only else self.irreps_out.dim)
        counts = torch.bincount(species, minlength=self.num_species)
        present = torch.nonzero(counts).flatten()
        sizes = counts[present].tolist()
        w = torch.cat([w.to(a.dtype) for w in self.weights], dim=1).index_select(0, present)  # [Z', P, K]
        if len(sizes) == 1:  # one element: nothing to sort
            f, mono = self._inputs(a)
            return self._finish(torch.bmm(self.coupling(w, first_only)[0], mono), f).permute(2, 0, 1)
        order = torch.argsort(species, stable=True)
        f, mono = self._inputs(a.index_select(0, order))
        fs = f.split(sizes, dim=2) if f is not None else [None] * len(sizes)
        y = torch.cat([self._finish(torch.bmm(c, x), g)
                       for c, x, g in zip(self.coupling(w, first_only).unbind(0), mono.split(sizes, dim=2), fs)], dim=2)
        back = torch.empty_like(order)
        back[order] = torch.arange(n, device=order.device)
        return y.permute(2, 0, 1).index_select(0, back)

    def forward_all_species(self, a: torch.Tensor, species: torch.Tensor, first_only: bool = False) -> torch.Tensor:
        """The contraction as every element's polynomial of every atom, of which each atom keeps its own.

        No shape depends on the values (the path taken while tracing or exporting);
        the cost per atom grows with the number of elements.
        """
        n, k, d = a.shape
        z, m = self.num_species, (self.first_dim if first_only else self.irreps_out.dim)
        w = torch.cat([w.to(a.dtype) for w in self.weights], dim=1)  # [Z, P, K]
        c = w.permute(2, 0, 1).reshape(k * z, -1) @ (self._u_all_first if first_only else self._u_all).to(a.dtype)
        c = c.view(k, z * m, -1)  # [K, Z * M, every monomial]
        f, mono = self._inputs(a)
        if f is not None:  # the monomials of the highest degree too
            top = mono.index_select(1, self._left_top) * f.index_select(1, self._right_top)
            mono = torch.cat([mono, top], dim=1)
        y = torch.bmm(c, mono).view(k, z, m, n)  # every element's polynomial of every atom
        return y.gather(1, species.view(1, 1, 1, n).expand(k, 1, m, n)).view(k, m, n).permute(2, 0, 1)
