"""Map atomic numbers to contiguous type indices, as models embed them."""

from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["TypeMap"]

_MAX_Z = 118


def _symbol(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z={z}"


def _atomic_number(x) -> int:
    if isinstance(x, str):
        from ase.data import atomic_numbers

        if x not in atomic_numbers:
            raise ValueError(f"unknown chemical symbol {x!r}")
        return atomic_numbers[x]
    z = int(x)
    if not 0 < z <= _MAX_Z:
        raise ValueError(f"atomic number must be in 1..{_MAX_Z}, got {x!r}")
    return z


class TypeMap:
    """The elements a model knows, in order: atomic number -> type index ``0 .. len - 1``.

    Immutable and hashable. Calling it on atomic numbers returns their type
    indices, and raises a :class:`ValueError` that names the element and the
    atom when an element is not in the map (a model asked about an element it
    was not trained on).

    Parameters
    ----------
    elements : iterable of int or str
        Atomic numbers or chemical symbols; duplicates are dropped and the
        order is by atomic number.

    Examples
    --------
    >>> tm = TypeMap(["O", "H", "C"])
    >>> tm
    TypeMap(['H', 'C', 'O'])
    >>> tm(torch.tensor([8, 1, 1, 6])).tolist()
    [2, 0, 0, 1]
    >>> tm(torch.tensor([1, 17]))
    Traceback (most recent call last):
    ...
    ValueError: element Cl (Z=17) of atom 1 is not in the type map ['H', 'C', 'O']
    """

    __slots__ = ("_numbers",)

    def __init__(self, elements: Iterable):
        numbers = tuple(sorted({_atomic_number(x) for x in elements}))
        if not numbers:
            raise ValueError("a type map needs at least one element")
        object.__setattr__(self, "_numbers", numbers)

    def __setattr__(self, name, value):
        raise AttributeError("TypeMap is immutable")

    @classmethod
    def from_graphs(cls, graphs) -> "TypeMap":
        """The elements present in an iterable of :class:`AtomicGraph` (or a dataset)."""
        found: set[int] = set()
        for g in graphs:
            found.update(torch.unique(g.numbers).tolist())
        return cls(found)

    @property
    def atomic_numbers(self) -> tuple[int, ...]:
        """Atomic numbers, in type-index order."""
        return self._numbers

    @property
    def symbols(self) -> list[str]:
        """Chemical symbols, in type-index order."""
        return [_symbol(z) for z in self._numbers]

    def __len__(self) -> int:
        return len(self._numbers)

    def __iter__(self):
        return iter(self._numbers)

    def __contains__(self, z) -> bool:
        return _atomic_number(z) in self._numbers

    def __eq__(self, other) -> bool:
        return isinstance(other, TypeMap) and other._numbers == self._numbers

    def __hash__(self) -> int:
        return hash(self._numbers)

    def __repr__(self) -> str:
        return f"TypeMap({self.symbols})"

    def index(self, z) -> int:
        """Type index of one element (atomic number or symbol)."""
        z = _atomic_number(z)
        if z not in self._numbers:
            raise ValueError(f"element {_symbol(z)} (Z={z}) is not in the type map {self.symbols}")
        return self._numbers.index(z)

    def lookup_table(self, device=None) -> torch.Tensor:
        """LongTensor ``[119]``: type index of each atomic number, ``-1`` where unknown.

        A model can register it as a buffer and index it on the hot path.
        """
        table = torch.full((_MAX_Z + 1,), -1, dtype=torch.long, device=device)
        table[list(self._numbers)] = torch.arange(len(self), device=device)
        return table

    def __call__(self, numbers: torch.Tensor) -> torch.Tensor:
        """Type indices of ``numbers`` (LongTensor ``[N]``); raises on an unknown element."""
        numbers = torch.as_tensor(numbers, dtype=torch.long)
        table = self.lookup_table(numbers.device)
        inside = (numbers >= 0) & (numbers <= _MAX_Z)
        types = torch.where(inside, table[numbers.clamp(0, _MAX_Z)], -1)
        unknown = types < 0
        if bool(unknown.any()):
            atom = int(unknown.nonzero()[0, 0])
            z = int(numbers[atom])
            more = int(unknown.sum()) - 1
            tail = f" ({more} more atoms too)" if more else ""
            raise ValueError(
                f"element {_symbol(z)} (Z={z}) of atom {atom} is not in the type map {self.symbols}{tail}"
            )
        return types

    def to_list(self) -> list[int]:
        """Plain list of atomic numbers, for configs and checkpoints."""
        return list(self._numbers)
