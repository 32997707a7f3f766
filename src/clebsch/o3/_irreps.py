"""Irreducible representations of O(3): :class:`Irrep` and :class:`Irreps`.

An irrep of O(3) is a pair ``(l, p)``: the degree ``l >= 0`` (dimension
``2l + 1``) and the parity ``p = +1`` (even, ``"e"``) or ``-1`` (odd, ``"o"``).
:class:`Irreps` is a direct sum of irreps with multiplicities, written
``"16x0e + 8x1o + 2e"``. Both are immutable, hashable tuples ordered like e3nn.
"""

from __future__ import annotations

import collections
import itertools
import re
from typing import Iterator, NamedTuple

import torch

__all__ = ["Irrep", "MulIr", "Irreps"]

_IRREP_RE = re.compile(r"^(\d+)([eoy])$")
_PARITY = {"e": 1, "o": -1}


class Irrep(tuple):
    r"""An irreducible representation ``(l, p)`` of O(3).

    Parameters
    ----------
    l : int or str or Irrep or tuple
        Degree ``l >= 0``, or a string such as ``"1o"`` (``"2y"`` means parity
        ``(-1)**l``, the parity of spherical harmonics), or ``(l, p)``.
    p : int, optional
        Parity, ``+1`` or ``-1``. Required when ``l`` is an int.

    Examples
    --------
    >>> Irrep("1o"), Irrep(2, 1), Irrep("3y")
    (1o, 2e, 3o)
    >>> Irrep("1o").dim
    3
    >>> sorted([Irrep("1e"), Irrep("0e"), Irrep("1o")])
    [0e, 1o, 1e]
    >>> list(Irrep("1o") * Irrep("1o"))
    [0e, 1e, 2e]
    """

    def __new__(cls, l, p=None):
        if p is None:
            if isinstance(l, Irrep):
                return l
            if isinstance(l, MulIr):
                return l.ir
            if isinstance(l, str):
                m = _IRREP_RE.match(l.strip())
                if m is None:
                    raise ValueError(f"cannot parse {l.strip()!r} as an irrep: expected e.g. '0e', '1o' or '2y'")
                l = int(m.group(1))
                p = (-1) ** l if m.group(2) == "y" else _PARITY[m.group(2)]
            elif isinstance(l, tuple) and len(l) == 2:
                l, p = l
            else:
                raise ValueError(f"cannot interpret {l!r} as an irrep: give (l, p), Irrep or a string like '1o'")
        if isinstance(l, bool) or not isinstance(l, int) or l < 0:
            raise ValueError(f"irrep degree l must be an int >= 0, got {l!r}")
        if isinstance(p, bool) or p not in (-1, 1):
            raise ValueError(f"irrep parity p must be +1 or -1, got {p!r}")
        return super().__new__(cls, (int(l), int(p)))

    def __getnewargs__(self):
        return (self[0], self[1])

    @property
    def l(self) -> int:  # noqa: E743
        """Degree ``l``."""
        return self[0]

    @property
    def p(self) -> int:
        """Parity ``+1`` (even) or ``-1`` (odd)."""
        return self[1]

    @property
    def dim(self) -> int:
        """Dimension ``2l + 1``."""
        return 2 * self[0] + 1

    def is_scalar(self) -> bool:
        """True for ``0e``."""
        return self[0] == 0 and self[1] == 1

    def __repr__(self) -> str:
        return f"{self[0]}{'e' if self[1] == 1 else 'o'}"

    __str__ = __repr__

    @classmethod
    def iterator(cls, lmax: int | None = None) -> Iterator["Irrep"]:
        """All irreps up to ``lmax`` (forever if None): ``0e, 0o, 1o, 1e, 2e, 2o, ...``.

        Examples
        --------
        >>> list(Irrep.iterator(1))
        [0e, 0o, 1o, 1e]
        """
        for l in itertools.count():
            if lmax is not None and l > lmax:
                return
            yield Irrep(l, (-1) ** l)
            yield Irrep(l, -((-1) ** l))

    def __mul__(self, other) -> Iterator["Irrep"]:
        """Irreps in the product ``self x other``: ``|l1 - l2| <= l <= l1 + l2``, ``p = p1 p2``."""
        other = Irrep(other)
        p = self.p * other.p
        return (Irrep(l, p) for l in range(abs(self.l - other.l), self.l + other.l + 1))

    def __rmul__(self, mul: int) -> "Irreps":
        """``3 * Irrep("1o")`` is ``Irreps("3x1o")``."""
        if not isinstance(mul, int):
            return NotImplemented
        return Irreps([(mul, self)])

    def __add__(self, other) -> "Irreps":
        return Irreps(self) + Irreps(other)

    def __radd__(self, other) -> "Irreps":
        return Irreps(other) + Irreps(self)

    def D_from_angles(self, alpha, beta, gamma, k=None) -> torch.Tensor:
        """Representation matrix ``p**k D^l(alpha, beta, gamma)``, shape ``(..., 2l+1, 2l+1)``.

        ``k`` (default 0) counts inversions; see :func:`clebsch.o3.wigner_D`.
        """
        from ._wigner import wigner_D

        d = wigner_D(self.l, alpha, beta, gamma)
        if k is not None:
            k = torch.as_tensor(k, dtype=d.dtype, device=d.device)
            d = d * (float(self.p) ** k)[..., None, None]
        return d

    def D_from_matrix(self, R: torch.Tensor) -> torch.Tensor:
        """Representation matrix of an orthogonal matrix ``R`` (``(..., 3, 3)``, det +1 or -1).

        Examples
        --------
        >>> Irrep("1o").D_from_matrix(-torch.eye(3)).long()
        tensor([[-1,  0,  0],
                [ 0, -1,  0],
                [ 0,  0, -1]])
        """
        from ._rotation import _check_matrix, matrix_to_angles

        _check_matrix(R)
        d = torch.det(R).sign()
        k = (1 - d) / 2
        return self.D_from_angles(*matrix_to_angles(d[..., None, None] * R), k)


class MulIr(NamedTuple):
    """``mul`` copies of the irrep ``ir``, e.g. ``8x1o``.

    Examples
    --------
    >>> m = MulIr(8, Irrep("1o"))
    >>> m, m.mul, m.ir, m.dim
    (8x1o, 8, 1o, 24)
    """

    mul: int
    ir: Irrep

    @property
    def dim(self) -> int:
        """``mul * (2l + 1)``."""
        return self.mul * self.ir.dim

    def __repr__(self) -> str:
        return f"{self.mul}x{self.ir}"

    __str__ = __repr__


def _parse_mul_ir(token: str) -> MulIr:
    token = token.strip()
    if "x" in token:
        mul_s, ir_s = token.split("x", 1)
        if not re.fullmatch(r"\d+", mul_s.strip()):
            raise ValueError(f"cannot parse {token!r} as irreps: multiplicity {mul_s.strip()!r} is not an int >= 0")
        mul = int(mul_s)
    else:
        mul, ir_s = 1, token
    if _IRREP_RE.match(ir_s.strip()) is None:
        raise ValueError(f"cannot parse {token!r} as irreps: {ir_s.strip()!r} is not an irrep like '0e', '1o', '2y'")
    return MulIr(mul, Irrep(ir_s))


_Sort = collections.namedtuple("sort", ["irreps", "p", "inv"])


class Irreps(tuple):
    r"""A direct sum of irreps with multiplicities: a tuple of :class:`MulIr`.

    Parameters
    ----------
    irreps : str or Irreps or Irrep or iterable, optional
        ``"16x0e + 8x1o + 2e"``, an :class:`Irrep`, or an iterable of
        ``(mul, ir)`` pairs, :class:`Irrep` or strings.

    Examples
    --------
    >>> x = Irreps("16x0e + 8x1o + 2e")
    >>> x
    16x0e+8x1o+1x2e
    >>> x.dim, x.num_irreps, x.lmax, x[1].mul, x[1].ir
    (45, 25, 2, 8, 1o)
    >>> x.slices()
    [slice(0, 16, None), slice(16, 40, None), slice(40, 45, None)]
    >>> Irreps("1o + 0e") + Irreps("0e") * 2
    1x1o+1x0e+1x0e+1x0e
    """

    def __new__(cls, irreps=None):
        if isinstance(irreps, Irreps):
            return super().__new__(cls, irreps)
        out = []
        if irreps is None:
            pass
        elif isinstance(irreps, Irrep):
            out.append(MulIr(1, irreps))
        elif isinstance(irreps, MulIr):
            out.append(MulIr(irreps.mul, Irrep(irreps.ir)))
        elif isinstance(irreps, str):
            if irreps.strip():
                out = [_parse_mul_ir(tok) for tok in irreps.split("+")]
        else:
            for item in irreps:
                if isinstance(item, str):
                    out.append(_parse_mul_ir(item))
                elif isinstance(item, Irrep):
                    out.append(MulIr(1, item))
                elif isinstance(item, tuple) and len(item) == 2 and not isinstance(item[0], tuple):
                    mul, ir = item
                    if isinstance(mul, bool) or not isinstance(mul, int) or mul < 0:
                        raise ValueError(f"multiplicity must be an int >= 0, got {mul!r} in {item!r}")
                    out.append(MulIr(mul, Irrep(ir)))
                else:
                    raise ValueError(f"cannot interpret {item!r} as (mul, irrep)")
        return super().__new__(cls, out)

    def __getnewargs__(self):
        return (list(self),)

    @staticmethod
    def spherical_harmonics(lmax: int, p: int = -1) -> "Irreps":
        """Irreps of the spherical harmonics up to ``lmax``: ``1x0e+1x1o+1x2e+...``.

        Examples
        --------
        >>> Irreps.spherical_harmonics(3)
        1x0e+1x1o+1x2e+1x3o
        >>> Irreps.spherical_harmonics(2, p=1)
        1x0e+1x1e+1x2e
        """
        return Irreps([(1, (l, p**l)) for l in range(lmax + 1)])

    def slices(self) -> list[slice]:
        """Where each ``mul x ir`` block sits in the flat feature dimension."""
        out, i = [], 0
        for mul_ir in self:
            out.append(slice(i, i + mul_ir.dim))
            i += mul_ir.dim
        return out

    @property
    def dim(self) -> int:
        """Total dimension ``sum(mul * (2l + 1))``."""
        return sum(m.dim for m in self)

    @property
    def num_irreps(self) -> int:
        """Total multiplicity ``sum(mul)``."""
        return sum(m.mul for m in self)

    @property
    def ls(self) -> list[int]:
        """The degree of every copy, e.g. ``[0, 0, 1]`` for ``2x0e+1o``."""
        return [m.ir.l for m in self for _ in range(m.mul)]

    @property
    def lmax(self) -> int:
        """Largest degree; ValueError for empty irreps."""
        if len(self) == 0:
            raise ValueError("lmax of empty Irreps is undefined")
        return max(m.ir.l for m in self)

    def count(self, ir) -> int:
        """Total multiplicity of ``ir``.

        Examples
        --------
        >>> Irreps("2x0e + 1o + 3x0e").count("0e")
        5
        """
        ir = Irrep(ir)
        return sum(m.mul for m in self if m.ir == ir)

    def __contains__(self, ir) -> bool:
        ir = Irrep(ir)
        return any(m.ir == ir for m in self)

    def __getitem__(self, i):
        x = super().__getitem__(i)
        return Irreps(x) if isinstance(i, slice) else x

    def __add__(self, other) -> "Irreps":
        return Irreps(tuple(self) + tuple(Irreps(other)))

    def __radd__(self, other) -> "Irreps":
        return Irreps(other) + self

    def __mul__(self, other) -> "Irreps":
        if isinstance(other, Irreps):
            raise TypeError("Irreps * Irreps is a tensor product: use clebsch.nn")
        if isinstance(other, bool) or not isinstance(other, int):
            return NotImplemented
        return Irreps(tuple(self) * other)

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return "+".join(repr(m) for m in self)

    __str__ = __repr__

    def simplify(self) -> "Irreps":
        """Merge neighbouring copies of the same irrep and drop zero multiplicities (no sorting).

        Examples
        --------
        >>> Irreps("1e + 1e + 0e + 0x2o + 1e").simplify()
        2x1e+1x0e+1x1e
        """
        out: list[tuple[int, Irrep]] = []
        for mul, ir in self:
            if mul == 0:
                continue
            if out and out[-1][1] == ir:
                out[-1] = (out[-1][0] + mul, ir)
            else:
                out.append((mul, ir))
        return Irreps(out)

    def remove_zero_multiplicities(self) -> "Irreps":
        """Drop the ``0x`` entries."""
        return Irreps([m for m in self if m.mul > 0])

    def sort(self):
        """Sort by irrep (stable); returns ``(irreps, p, inv)``.

        ``p[i]`` is the new position of entry ``i``; ``inv[j]`` the old position of new entry ``j``.

        Examples
        --------
        >>> s = Irreps("2o + 1e + 0e + 1e").sort()
        >>> s.irreps, s.p, s.inv
        (1x0e+1x1e+1x1e+1x2o, (3, 1, 0, 2), (2, 1, 3, 0))
        """
        inv = tuple(sorted(range(len(self)), key=lambda i: (self[i].ir, i)))
        p = [0] * len(inv)
        for new, old in enumerate(inv):
            p[old] = new
        return _Sort(Irreps([self[i] for i in inv]), tuple(p), inv)

    def regroup(self) -> "Irreps":
        """``sort().irreps.simplify()``."""
        return self.sort().irreps.simplify()

    def filter(self, keep=None, drop=None, lmax: int | None = None) -> "Irreps":
        """Keep or drop some irreps.

        Parameters
        ----------
        keep, drop : irreps-like, list of irreps, or callable on MulIr, optional
        lmax : int, optional
            Keep only ``l <= lmax``.

        Examples
        --------
        >>> Irreps("1o + 2e + 0e").filter(keep="0e + 1o")
        1x1o+1x0e
        >>> Irreps("1o + 2e + 0e").filter(drop=["0e"], lmax=1)
        1x1o
        """
        out = self
        if keep is not None:
            if callable(keep):
                out = Irreps([m for m in out if keep(m)])
            else:
                ks = {Irrep(k) for k in ([keep] if isinstance(keep, Irrep) else _as_ir_list(keep))}
                out = Irreps([m for m in out if m.ir in ks])
        if drop is not None:
            if callable(drop):
                out = Irreps([m for m in out if not drop(m)])
            else:
                ds = {Irrep(d) for d in ([drop] if isinstance(drop, Irrep) else _as_ir_list(drop))}
                out = Irreps([m for m in out if m.ir not in ds])
        if lmax is not None:
            out = Irreps([m for m in out if m.ir.l <= lmax])
        return out

    def randn(self, *size: int, normalization: str = "component", requires_grad: bool = False,
              dtype=None, device=None, generator=None) -> torch.Tensor:
        """Random features; ``size`` contains one ``-1`` that becomes ``self.dim``.

        ``"component"``: standard normal entries. ``"norm"``: each irrep copy has unit norm.

        Examples
        --------
        >>> Irreps("5x0e + 10x1o").randn(5, -1, 5, normalization="norm").shape
        torch.Size([5, 35, 5])
        """
        if size.count(-1) != 1:
            raise ValueError(f"size must contain exactly one -1 (the irreps dimension), got {size}")
        di = size.index(-1)
        lsize, rsize = size[:di], size[di + 1:]
        shape = (*lsize, self.dim, *rsize)
        x = torch.randn(shape, dtype=dtype, device=device, generator=generator)
        if normalization == "norm":
            parts = []
            for s, (mul, ir) in zip(self.slices(), self):
                r = x.narrow(di, s.start, s.stop - s.start).reshape(*lsize, mul, ir.dim, *rsize)
                parts.append((r / r.norm(dim=di + 1, keepdim=True)).reshape(*lsize, mul * ir.dim, *rsize))
            x = torch.cat(parts, dim=di) if parts else x
        elif normalization != "component":
            raise ValueError(f"normalization must be 'component' or 'norm', got {normalization!r}")
        return x.requires_grad_(requires_grad)

    def D_from_angles(self, alpha, beta, gamma, k=None) -> torch.Tensor:
        """Block-diagonal representation matrix, shape ``(..., dim, dim)``."""
        from ._wigner import wigner_D

        alpha, beta, gamma = torch.broadcast_tensors(*(torch.as_tensor(a) for a in (alpha, beta, gamma)))
        shape = alpha.shape
        out = torch.zeros(*shape, self.dim, self.dim, dtype=alpha.dtype, device=alpha.device)
        sign = None
        if k is not None:
            k = torch.as_tensor(k, dtype=alpha.dtype, device=alpha.device)
            sign = (-1.0) ** k
        cache: dict[int, torch.Tensor] = {}
        i = 0
        for mul, ir in self:
            if ir.l not in cache:
                cache[ir.l] = wigner_D(ir.l, alpha, beta, gamma)
            d = cache[ir.l]
            if sign is not None and ir.p == -1:
                d = d * sign[..., None, None]
            for _ in range(mul):
                out[..., i:i + ir.dim, i:i + ir.dim] = d
                i += ir.dim
        return out

    def D_from_matrix(self, R: torch.Tensor) -> torch.Tensor:
        """Block-diagonal representation of orthogonal ``R`` (``(..., 3, 3)``); parity applied if det R = -1.

        Examples
        --------
        >>> Irreps("0e + 0o + 1o").D_from_matrix(-torch.eye(3)).diagonal().tolist()
        [1.0, -1.0, -1.0, -1.0, -1.0]
        """
        from ._rotation import _check_matrix, matrix_to_angles

        _check_matrix(R)
        d = torch.det(R).sign()
        k = (1 - d) / 2
        return self.D_from_angles(*matrix_to_angles(d[..., None, None] * R), k)


def _as_ir_list(x) -> list[Irrep]:
    if isinstance(x, str):
        return [m.ir for m in Irreps(x)]
    if isinstance(x, Irreps):
        return [m.ir for m in x]
    return [Irrep(i) if not isinstance(i, MulIr) else i.ir for i in x]
