"""``TypeMap``: atomic numbers to contiguous species indices 0..S-1."""

from __future__ import annotations

from typing import Iterable

import torch
from ase.data import chemical_symbols

__all__ = ["TypeMap"]


class TypeMap:
    """Map atomic numbers to species indices, in increasing atomic number.

    Examples
    --------
    >>> tm = TypeMap([8, 1, 6, 1])
    >>> tm.numbers, tm.symbols
    ([1, 6, 8], ['H', 'C', 'O'])
    >>> tm(torch.tensor([6, 1, 1, 8])).tolist()
    [1, 0, 0, 2]
    >>> tm(torch.tensor([1, 29]))
    Traceback (most recent call last):
    ...
    ValueError: atom 1 is Cu (Z=29), an element the type map does not know; it knows ['H', 'C', 'O']
    """

    def __init__(self, numbers: Iterable[int]):
        if isinstance(numbers, torch.Tensor):
            numbers = numbers.reshape(-1).tolist()
        self.numbers = sorted({int(z) for z in numbers})
        if not self.numbers:
            raise ValueError("a TypeMap needs at least one element")
        bad = [z for z in self.numbers if not 0 < z < len(chemical_symbols)]
        if bad:
            raise ValueError(f"not atomic numbers: {bad}")
        lookup = torch.full((max(self.numbers) + 1,), -1, dtype=torch.long)
        lookup[torch.tensor(self.numbers)] = torch.arange(len(self.numbers))
        self._lookup = lookup

    @classmethod
    def from_symbols(cls, symbols: Iterable[str]) -> "TypeMap":
        """``TypeMap.from_symbols(["H", "C", "O"])``."""
        try:
            return cls(chemical_symbols.index(s) for s in symbols)
        except ValueError:
            raise ValueError(f"unknown chemical symbol among {list(symbols)}") from None

    @classmethod
    def from_graphs(cls, graphs) -> "TypeMap":
        """The elements present in a sequence of graphs (or a dataset)."""
        return cls(torch.cat([g.numbers for g in graphs]).unique())

    @property
    def symbols(self) -> list[str]:
        return [chemical_symbols[z] for z in self.numbers]

    def __len__(self) -> int:
        return len(self.numbers)

    def __contains__(self, z) -> bool:
        return int(z) in self.numbers

    def __eq__(self, other) -> bool:
        return isinstance(other, TypeMap) and other.numbers == self.numbers

    def __hash__(self):
        return hash(tuple(self.numbers))

    def __repr__(self) -> str:
        return f"TypeMap({self.symbols})"

    def __call__(self, numbers: torch.Tensor, where: str | None = None) -> torch.Tensor:
        """Species indices of ``numbers``; raises naming the first unknown element and its atom."""
        numbers = torch.as_tensor(numbers, dtype=torch.long)
        lookup = self._lookup.to(numbers.device)
        inside = (numbers >= 0) & (numbers < lookup.shape[0])
        index = torch.where(inside, lookup[numbers.clamp(0, lookup.shape[0] - 1)], torch.full_like(numbers, -1))
        if bool((index < 0).any()):
            bad = int((index < 0).nonzero()[0])
            z = int(numbers[bad])
            name = chemical_symbols[z] if 0 <= z < len(chemical_symbols) else "?"
            raise ValueError(
                f"atom {bad} is {name} (Z={z}), an element the type map does not know; it knows {self.symbols}"
                + (f" ({where})" if where else "")
            )
        return index

    def to_list(self) -> list[int]:
        """JSON-friendly form; ``TypeMap(tm.to_list())`` rebuilds it."""
        return list(self.numbers)
