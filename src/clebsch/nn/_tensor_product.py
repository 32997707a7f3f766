r"""Clebsch–Gordan tensor product compiled into a few dense contractions.

For every path :math:`(l_1, l_2 \to l_3)` the product of two features is

.. math:: z_{k} = c \sum_{i j} C^{l_1 l_2 l_3}_{i j k} \, x_{i}\, y_{j}

with :math:`C` the real Wigner 3j symbol and :math:`c` the normalisation.
Paths that share the connection mode and the multiplicities of their inputs
are stacked into one *group*: their Clebsch–Gordan blocks are placed into one
dense tensor ``C[I, J, K]`` (a buffer, built once), so that a whole group costs
two matrix products whatever its number of paths:

1. ``M[z, v, I, K] = sum_J y[z, v, J] C[J, I, K]`` (the small second input,
   e.g. edge spherical harmonics, first);
2. ``T[z, u, v, K] = sum_I x[z, u, I] M[z, v, I, K]`` (one batched matmul);
3. the per-path weights are gathered to each path's ``K`` segment and applied,
   and the paths are summed into their output irreps by one more matmul.

Layout changes between e3nn's ``mul_ir`` layout and ``[z, u, I]`` are
precomputed index gathers. No Python loop over paths runs at call time.
"""

import math
from typing import Optional, Sequence

import torch

from ..o3 import Irreps, wigner_3j
from ._path import Path

__all__ = ["TensorProduct"]


def _w3j(l1: int, l2: int, l3: int) -> torch.Tensor:
    """Real Wigner 3j symbol in float64."""
    try:
        c = wigner_3j(l1, l2, l3, dtype=torch.float64)
    except TypeError:  # pragma: no cover - o3 without a dtype argument
        c = wigner_3j(l1, l2, l3)
    return c.to(torch.float64)


def _is_arange(idx: torch.Tensor, n: int) -> bool:
    return idx.numel() == n and bool((idx == torch.arange(n)).all())


class _PathGroup(torch.nn.Module):
    """Paths sharing ``mode``, ``has_weight`` and input multiplicities, evaluated together.

    ``forward`` returns a ``[n, N]`` block of output values and ``self.dest`` says,
    for each of the ``N`` columns, where it goes in the flat (``mul_ir``) output.
    """

    def __init__(self, irreps_in1, irreps_in2, irreps_out, entries, mode, weighted):
        super().__init__()
        # entries: list of (path, coefficient, weight_offset)
        self.mode = mode
        self.weighted = weighted
        p0 = entries[0][0]
        U, V = irreps_in1[p0.i_in1].mul, irreps_in2[p0.i_in2].mul
        Wm = irreps_out[p0.i_out].mul
        self.U, self.V = U, V
        if mode == "uvw":  # paths of equal output dimension next to each other
            entries = sorted(entries, key=lambda e: irreps_out[e[0].i_out].ir.dim)

        s1, s2, so = irreps_in1.slices(), irreps_in2.slices(), irreps_out.slices()

        # -- inputs: one copy of every irrep used, side by side ([z, u, I] and [z, v, J])
        def blocks(indices, irreps):
            order, off, n = [], {}, 0
            for i in indices:
                if i not in off:
                    off[i] = n
                    order.append(i)
                    n += irreps[i].ir.dim
            return order, off, n

        a_order, a_off, I = blocks([e[0].i_in1 for e in entries], irreps_in1)
        b_order, b_off, J = blocks([e[0].i_in2 for e in entries], irreps_in2)
        self.I, self.J = I, J

        def gather(order, irreps, slices, mul):
            return torch.tensor(
                [slices[i].start + u * irreps[i].ir.dim + m for u in range(mul) for i in order for m in range(irreps[i].ir.dim)],
                dtype=torch.long,
            )

        idx1 = gather(a_order, irreps_in1, s1, U)
        idx2 = gather(b_order, irreps_in2, s2, V)
        self.gather1 = not _is_arange(idx1, irreps_in1.dim)
        self.gather2 = not _is_arange(idx2, irreps_in2.dim)
        self.register_buffer("idx1", idx1, persistent=False)
        self.register_buffer("idx2", idx2, persistent=False)

        # -- Clebsch-Gordan blocks, one K segment per path
        k_off, PK = [], 0
        for path, _, _ in entries:
            k_off.append(PK)
            PK += irreps_out[path.i_out].ir.dim
        self.PK = PK
        C = torch.zeros(I, J, PK, dtype=torch.float64)
        for (path, coeff, _), k in zip(entries, k_off):
            ir1, ir2, iro = irreps_in1[path.i_in1].ir, irreps_in2[path.i_in2].ir, irreps_out[path.i_out].ir
            a, b = a_off[path.i_in1], b_off[path.i_in2]
            C[a : a + ir1.dim, b : b + ir2.dim, k : k + iro.dim] = coeff * _w3j(ir1.l, ir2.l, iro.l)
        self.register_buffer("cg", C.permute(1, 0, 2).reshape(J, I * PK).contiguous(), persistent=False)

        def dest_of(i_out, copy, m):
            return so[i_out].start + copy * irreps_out[i_out].ir.dim + m

        if mode != "uvw":
            # -- output columns: every target irrep once; S sums the paths into them
            t_off, K = {}, 0
            for path, _, _ in entries:
                if path.i_out not in t_off:
                    t_off[path.i_out] = K
                    K += irreps_out[path.i_out].ir.dim
            S = torch.zeros(PK, K, dtype=torch.float64)
            for (path, _, _), k in zip(entries, k_off):
                d = irreps_out[path.i_out].ir.dim
                S[k : k + d, t_off[path.i_out] : t_off[path.i_out] + d] = torch.eye(d, dtype=torch.float64)
            if mode == "uvu":
                S = S.repeat(V, 1)  # sums over v as well
            self.register_buffer("S", S, persistent=False)
            cols = [(i_out, m) for i_out in t_off for m in range(irreps_out[i_out].ir.dim)]
            copies = {"uvu": U, "uvv": V, "uuu": U, "uvuv": U * V}[mode]
            dest = [dest_of(i_out, c, m) for c in range(copies) for i_out, m in cols]
            self.register_buffer("dest", torch.tensor(dest, dtype=torch.long), persistent=False)
            if weighted:
                if mode == "uuu":
                    widx = [w_off + u for u in range(U) for (_, _, w_off), k in zip(entries, k_off) for _ in range(self._dim(irreps_out, entries, k_off, k))]
                else:
                    widx = [
                        w_off + u * V + v
                        for u in range(U)
                        for v in range(V)
                        for (path, _, w_off) in entries
                        for _ in range(irreps_out[path.i_out].ir.dim)
                    ]
                self.register_buffer("widx", torch.tensor(widx, dtype=torch.long), persistent=False)
        else:
            # -- uvw: per output dimension d, one matmul [z, d, (uv, p)] @ [(uv, p), (w, o)]
            self.classes = []  # (start, stop, n_paths, d, n_targets)
            dests = []
            i = 0
            while i < len(entries):
                d = irreps_out[entries[i][0].i_out].ir.dim
                j = i
                while j < len(entries) and irreps_out[entries[j][0].i_out].ir.dim == d:
                    j += 1
                cls = entries[i:j]
                targets = list(dict.fromkeys(p.i_out for p, _, _ in cls))
                P, O = len(cls), len(targets)
                widx = torch.zeros(U * V, P, Wm, O, dtype=torch.long)
                mask = torch.zeros(U * V, P, Wm, O, dtype=torch.float64)
                for pi, (path, _, w_off) in enumerate(cls):
                    o = targets.index(path.i_out)
                    widx[:, pi, :, o] = w_off + torch.arange(U * V)[:, None] * Wm + torch.arange(Wm)[None, :]
                    mask[:, pi, :, o] = 1.0
                c = len(self.classes)
                self.register_buffer(f"widx{c}", widx.reshape(-1), persistent=False)
                self.register_buffer(f"mask{c}", mask.reshape(U * V * P, Wm * O) if O > 1 else None, persistent=False)
                self.classes.append((k_off[i], k_off[i] + P * d, P, d, Wm * O))
                dests += [dest_of(targets[o], w, m) for m in range(d) for w in range(Wm) for o in range(O)]
                i = j
            self.register_buffer("dest", torch.tensor(dests, dtype=torch.long), persistent=False)

    @staticmethod
    def _dim(irreps_out, entries, k_off, k):
        return irreps_out[entries[k_off.index(k)][0].i_out].ir.dim

    def _weights(self, w: Optional[torch.Tensor], idx: torch.Tensor, shape) -> torch.Tensor:
        # w is [numel] (shared) or [n, numel] (per sample)
        return w.index_select(-1, idx).view(*w.shape[:-1], *shape)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, w: Optional[torch.Tensor]) -> torch.Tensor:
        n = x1.shape[0]
        U, V, I, J, PK = self.U, self.V, self.I, self.J, self.PK
        x1g = (x1.index_select(1, self.idx1) if self.gather1 else x1).view(n, U, I)
        x2g = (x2.index_select(1, self.idx2) if self.gather2 else x2).reshape(n * V, J)
        cg = self.cg.to(x1.dtype)
        if self.mode == "uuu":
            m = (x2g @ cg).view(n * U, I, PK)
            t = torch.bmm(x1g.reshape(n * U, 1, I), m).view(n, U, PK)
            if self.weighted:
                t = t * self._weights(w, self.widx, (U, PK))
            return (t @ self.S.to(t.dtype)).reshape(n, -1)

        m = (x2g @ cg).view(n, V, I, PK)
        m = m.view(n, I, PK) if V == 1 else m.transpose(1, 2).reshape(n, I, V * PK)
        t = torch.bmm(x1g, m)  # [n, U, V * PK]

        if self.mode == "uvw":
            t = t.view(n, U * V, PK)
            outs = []
            for c, (start, stop, P, d, WO) in enumerate(self.classes):
                tc = t[:, :, start:stop].reshape(n, U * V, P, d).permute(0, 3, 1, 2).reshape(n, d, U * V * P)
                wc = self._weights(w, getattr(self, f"widx{c}"), (U * V * P, WO))
                mask = getattr(self, f"mask{c}")
                if mask is not None:
                    wc = wc * mask.to(wc.dtype)
                outs.append(torch.matmul(tc, wc).reshape(n, d * WO))
            return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

        if self.weighted:
            t = t * self._weights(w, self.widx, (U, V * PK))
        S = self.S.to(t.dtype)
        if self.mode == "uvu":
            return (t @ S).reshape(n, -1)  # S also sums over v
        if self.mode == "uvv":
            return (t.view(n, U, V, PK).sum(1) @ S).reshape(n, -1)
        return (t.view(n, U * V, PK) @ S).reshape(n, -1)  # uvuv


class TensorProduct(torch.nn.Module):
    r"""Tensor product of two irreps features along a list of typed paths.

    Equal (same paths, same weights) to e3nn's ``o3.TensorProduct``, with the
    same normalisations and the same flat weight layout: the weights of the
    weighted paths, in order, each flattened row-major over
    :meth:`Path.weight_shape`.

    Parameters
    ----------
    irreps_in1, irreps_in2, irreps_out : Irreps or str
        Irreps of the two inputs and of the output.
    paths : sequence of :class:`Path`
        Which input irreps are combined into which output irrep.
    irrep_normalization : {"component", "norm", "none"}
        Normalisation assumed for inputs and outputs.
    path_normalization : {"element", "path", "none"}
        How the paths into one output share its variance.
    internal_weights : bool, optional
        Own the weights as a parameter ``weight``. Defaults to ``shared_weights``
        (when any path is weighted).
    shared_weights : bool, optional
        One set of weights for the whole batch (``weight`` of shape
        ``(weight_numel,)``) instead of one per sample (``(..., weight_numel)``).
        Defaults to ``True``.
    in1_var, in2_var, out_var : sequence of float, optional
        Variances of the input irreps and the wanted output variances.

    Examples
    --------
    >>> from clebsch.nn import Path
    >>> tp = TensorProduct("8x0e + 8x1o", "0e + 1o", "8x0e + 8x1o",
    ...                    [Path(0, 0, 0, "uvu"), Path(0, 1, 1, "uvu"), Path(1, 0, 1, "uvu"), Path(1, 1, 0, "uvu")],
    ...                    shared_weights=False)
    >>> tp
    TensorProduct(8x0e+8x1o x 1x0e+1x1o -> 8x0e+8x1o | 4 paths | 32 weights)
    >>> tp(torch.randn(10, 32), torch.randn(10, 4), torch.randn(10, tp.weight_numel)).shape
    torch.Size([10, 32])
    """

    def __init__(
        self,
        irreps_in1,
        irreps_in2,
        irreps_out,
        paths: Sequence[Path],
        *,
        irrep_normalization: str = "component",
        path_normalization: str = "element",
        internal_weights: Optional[bool] = None,
        shared_weights: Optional[bool] = None,
        in1_var: Optional[Sequence[float]] = None,
        in2_var: Optional[Sequence[float]] = None,
        out_var: Optional[Sequence[float]] = None,
    ) -> None:
        super().__init__()
        self.irreps_in1 = Irreps(irreps_in1)
        self.irreps_in2 = Irreps(irreps_in2)
        self.irreps_out = Irreps(irreps_out)
        self.paths = tuple(paths)
        if irrep_normalization not in ("component", "norm", "none"):
            raise ValueError(f"irrep_normalization must be 'component', 'norm' or 'none', got {irrep_normalization!r}")
        if path_normalization not in ("element", "path", "none"):
            raise ValueError(f"path_normalization must be 'element', 'path' or 'none', got {path_normalization!r}")
        self.irrep_normalization = irrep_normalization
        self.path_normalization = path_normalization
        self._check_paths()

        def variances(var, irreps, name):
            if var is None:
                return [1.0] * len(irreps)
            var = [float(v) for v in var]
            if len(var) != len(irreps):
                raise ValueError(f"{name} has {len(var)} entries but there are {len(irreps)} irreps")
            return var

        in1_var = variances(in1_var, self.irreps_in1, "in1_var")
        in2_var = variances(in2_var, self.irreps_in2, "in2_var")
        out_var = variances(out_var, self.irreps_out, "out_var")
        self.path_coefficients = tuple(self._coefficient(p, in1_var, in2_var, out_var) for p in self.paths)

        # -- weights
        self.weight_shapes = tuple(self._weight_shape(p) if p.has_weight else () for p in self.paths)
        offsets, n = [], 0
        for p, shape in zip(self.paths, self.weight_shapes):
            offsets.append(n)
            n += math.prod(shape) if p.has_weight else 0
        self.weight_numel = n
        self._weight_offsets = tuple(offsets)

        if shared_weights is False and internal_weights is None:
            internal_weights = False
        if shared_weights is None:
            shared_weights = True
        if internal_weights is None:
            internal_weights = shared_weights and any(p.has_weight for p in self.paths)
        if internal_weights and not shared_weights:
            raise ValueError("internal_weights=True needs shared_weights=True")
        self.shared_weights = bool(shared_weights)
        self.internal_weights = bool(internal_weights)
        if self.internal_weights and self.weight_numel > 0:
            self.weight = torch.nn.Parameter(torch.randn(self.weight_numel))
        else:
            self.register_parameter("weight", None)

        self._build()

    # ------------------------------------------------------------------ construction
    def _describe(self, p: Path) -> str:
        def ir(irreps, i):
            return str(irreps[i].ir) if i < len(irreps) else "?"

        return f"{p.short()} [{ir(self.irreps_in1, p.i_in1)} x {ir(self.irreps_in2, p.i_in2)} -> {ir(self.irreps_out, p.i_out)}]"

    def _check_paths(self) -> None:
        for p in self.paths:
            if not isinstance(p, Path):
                raise TypeError(f"paths must be clebsch.nn.Path objects, got {p!r}")
            for i, irreps, name in ((p.i_in1, self.irreps_in1, "irreps_in1"), (p.i_in2, self.irreps_in2, "irreps_in2"), (p.i_out, self.irreps_out, "irreps_out")):
                if i >= len(irreps):
                    raise ValueError(f"{self._describe(p)}: index {i} out of range for {name} = {irreps} ({len(irreps)} irreps)")
            (m1, ir1), (m2, ir2), (mo, iro) = self.irreps_in1[p.i_in1], self.irreps_in2[p.i_in2], self.irreps_out[p.i_out]
            if ir1.p * ir2.p != iro.p:
                raise ValueError(f"{self._describe(p)}: parity rule violated ({ir1.p} * {ir2.p} != {iro.p})")
            if not abs(ir1.l - ir2.l) <= iro.l <= ir1.l + ir2.l:
                raise ValueError(f"{self._describe(p)}: triangle rule violated (|{ir1.l} - {ir2.l}| <= {iro.l} <= {ir1.l} + {ir2.l} fails)")
            need = {"uvu": (mo == m1, "mul_out == mul_in1"), "uvv": (mo == m2, "mul_out == mul_in2"),
                    "uuu": (m1 == m2 == mo, "mul_in1 == mul_in2 == mul_out"), "uvuv": (mo == m1 * m2, "mul_out == mul_in1 * mul_in2")}
            if p.mode in need and not need[p.mode][0]:
                raise ValueError(f"{self._describe(p)}: mode {p.mode!r} needs {need[p.mode][1]}, got multiplicities {m1}, {m2} -> {mo}")

    def _weight_shape(self, p: Path) -> tuple:
        return p.weight_shape(self.irreps_in1[p.i_in1].mul, self.irreps_in2[p.i_in2].mul, self.irreps_out[p.i_out].mul)

    def _coefficient(self, p: Path, in1_var, in2_var, out_var) -> float:
        (m1, ir1), (m2, ir2), (_, iro) = self.irreps_in1[p.i_in1], self.irreps_in2[p.i_in2], self.irreps_out[p.i_out]
        alpha = {"component": iro.dim, "norm": ir1.dim * ir2.dim, "none": 1}[self.irrep_normalization]

        def n_el(q):
            return in1_var[q.i_in1] * in2_var[q.i_in2] * q.num_elements(self.irreps_in1[q.i_in1].mul, self.irreps_in2[q.i_in2].mul)

        if self.path_normalization == "element":
            x = sum(n_el(q) for q in self.paths if q.i_out == p.i_out)
        elif self.path_normalization == "path":
            x = n_el(p) * sum(1 for q in self.paths if q.i_out == p.i_out)
        else:
            x = 1.0
        if x > 0:
            alpha /= x
        return math.sqrt(alpha * out_var[p.i_out] * p.path_weight)

    def _build(self) -> None:
        groups = {}
        for p, c, off in zip(self.paths, self.path_coefficients, self._weight_offsets):
            (m1, ir1), (m2, ir2), (mo, iro) = self.irreps_in1[p.i_in1], self.irreps_in2[p.i_in2], self.irreps_out[p.i_out]
            if m1 * m2 * mo == 0 or c == 0.0:
                continue
            key = (p.mode, p.has_weight, m1, m2, mo if p.mode == "uvw" else 0)
            groups.setdefault(key, []).append((p, c, off))
        self.groups = torch.nn.ModuleList(
            _PathGroup(self.irreps_in1, self.irreps_in2, self.irreps_out, entries, key[0], key[1]) for key, entries in groups.items()
        )
        dest = torch.cat([g.dest for g in self.groups]) if len(self.groups) else torch.zeros(0, dtype=torch.long)
        n_cols, dim = dest.numel(), self.irreps_out.dim
        self._scatter = bool(dest.unique().numel() != n_cols)
        self._pad = False
        self._identity = False
        if self._scatter:
            self.register_buffer("_out_index", dest, persistent=False)
        else:
            src = torch.full((dim,), n_cols, dtype=torch.long)
            src[dest] = torch.arange(n_cols)
            self._pad = bool((src == n_cols).any())
            self._identity = (not self._pad) and _is_arange(src, dim)
            self.register_buffer("_out_index", src, persistent=False)

    # ------------------------------------------------------------------ call
    def _check_weight(self, weight: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if weight is None:
            if self.weight_numel == 0:
                return None
            if self.weight is None:
                raise ValueError(f"this TensorProduct has no internal weights: pass weight of shape (..., {self.weight_numel})")
            return self.weight
        if self.shared_weights:
            if tuple(weight.shape) != (self.weight_numel,):
                raise ValueError(f"weight has shape {tuple(weight.shape)}, expected ({self.weight_numel},) (shared weights)")
        elif weight.dim() == 0 or weight.shape[-1] != self.weight_numel:
            raise ValueError(f"weight has shape {tuple(weight.shape)}, expected (..., {self.weight_numel})")
        return weight

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Evaluate the product.

        Parameters
        ----------
        x1 : torch.Tensor
            ``(..., irreps_in1.dim)``.
        x2 : torch.Tensor
            ``(..., irreps_in2.dim)``; batch dimensions broadcast with ``x1``.
        weight : torch.Tensor, optional
            ``(weight_numel,)`` if ``shared_weights`` else ``(..., weight_numel)``;
            defaults to the internal weights.

        Returns
        -------
        torch.Tensor
            ``(..., irreps_out.dim)``.
        """
        d1, d2, do = self.irreps_in1.dim, self.irreps_in2.dim, self.irreps_out.dim
        if x1.dim() == 0 or x1.shape[-1] != d1:
            raise ValueError(f"x1 has shape {tuple(x1.shape)}, expected (..., {d1}) for irreps_in1 = {self.irreps_in1}")
        if x2.dim() == 0 or x2.shape[-1] != d2:
            raise ValueError(f"x2 has shape {tuple(x2.shape)}, expected (..., {d2}) for irreps_in2 = {self.irreps_in2}")
        w = self._check_weight(weight)
        shapes = [x1.shape[:-1], x2.shape[:-1]]
        if w is not None and not self.shared_weights:
            shapes.append(w.shape[:-1])
        try:
            batch = torch.broadcast_shapes(*shapes)
        except RuntimeError:
            raise ValueError(f"batch shapes {[tuple(s) for s in shapes]} of x1, x2 (and weight) do not broadcast") from None
        x1 = x1.expand(*batch, d1).reshape(-1, d1)
        x2 = x2.expand(*batch, d2).reshape(-1, d2)
        if w is not None and not self.shared_weights:
            w = w.expand(*batch, self.weight_numel).reshape(-1, self.weight_numel)
        if len(self.groups) == 0:
            return x1.new_zeros(*batch, do)

        ys = [g(x1, x2, w) for g in self.groups]
        y = ys[0] if len(ys) == 1 else torch.cat(ys, dim=1)
        if self._scatter:
            out = y.new_zeros(y.shape[0], do).index_add(1, self._out_index, y)
        elif self._identity:
            out = y
        else:
            if self._pad:
                y = torch.nn.functional.pad(y, (0, 1))
            out = y.index_select(1, self._out_index)
        return out.reshape(*batch, do)

    def weight_view(self, path_index: int, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The weights of one path, shaped ``(..., *weight_shape)``.

        Examples
        --------
        >>> tp = TensorProduct("2x0e", "3x0e", "4x0e", [Path(0, 0, 0, "uvw")])
        >>> tp.weight_view(0).shape
        torch.Size([2, 3, 4])
        """
        if not self.paths[path_index].has_weight:
            raise ValueError(f"{self.paths[path_index].short()} has no weights")
        w = self.weight if weight is None else weight
        shape = self.weight_shapes[path_index]
        off = self._weight_offsets[path_index]
        return w.narrow(-1, off, math.prod(shape)).reshape(*w.shape[:-1], *shape)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.irreps_in1.simplify()} x {self.irreps_in2.simplify()} -> "
            f"{self.irreps_out.simplify()} | {len(self.paths)} paths | {self.weight_numel} weights)"
        )
