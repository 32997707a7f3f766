"""Units of data files, converted on reading to the units clebsch stores (eV, Å, e).

Every target keeps its values in one unit (:attr:`clebsch.targets.Target.unit`:
energies in eV, forces in eV/Å, dipoles in e·Å, ...), and the ASE calculator
and the metrics assume them. Files written by other codes often use others:
sGDML's MD17 files kcal/mol and kcal/mol/Å, QM9 Hartree and Debye, quantum
chemistry Bohr. ``data.units`` names the file's unit per target (and
``positions`` for coordinates and cell), and each value is multiplied by the
conversion factor as it is read::

    data:
      units: {energy: kcal/mol, forces: kcal/mol/Å, positions: Å}

A unit is a product of known units with integer powers, divided by others:
``kcal/mol/Å``, ``Ha/Bohr``, ``eV/Å^3`` (or ``Å³``, ``Å**3``), ``e·Bohr``,
``Bohr^3``, ``D`` (Debye), ``GPa``. Conversions between units of different
dimensions are refused, naming both.

>>> round(factor("kcal/mol", "eV"), 6)
0.043364
>>> round(factor("Ha/Bohr", "eV/Å"), 4)
51.4221
>>> factor("kcal/mol", "eV/Å")
Traceback (most recent call last):
...
ValueError: kcal/mol is an energy and eV/Å an energy / length: they cannot be converted
"""

from __future__ import annotations

import re

from ase import units as _ase

__all__ = ["parse_unit", "factor", "unit_factors", "KNOWN_UNITS"]

# unit -> (value in eV, Å, e; exponents of (energy, length, charge))
_E, _L, _Q, _ONE = (1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 0, 0)
KNOWN_UNITS: dict[str, tuple[float, tuple[int, int, int]]] = {
    "eV": (1.0, _E), "meV": (1e-3, _E),
    "Ha": (_ase.Hartree, _E), "Hartree": (_ase.Hartree, _E), "hartree": (_ase.Hartree, _E),
    "Eh": (_ase.Hartree, _E), "mHa": (1e-3 * _ase.Hartree, _E),
    "Ry": (_ase.Rydberg, _E), "Rydberg": (_ase.Rydberg, _E),
    "kcal": (_ase.kcal, _E), "kJ": (_ase.kJ, _E), "J": (_ase.J, _E),
    "mol": (_ase.mol, _ONE),
    "Å": (1.0, _L), "Ang": (1.0, _L), "Angstrom": (1.0, _L), "angstrom": (1.0, _L),
    "Bohr": (_ase.Bohr, _L), "bohr": (_ase.Bohr, _L), "a0": (_ase.Bohr, _L),
    "nm": (10.0, _L), "pm": (0.01, _L),
    "e": (1.0, _Q),
    "D": (_ase.Debye, (0, 1, 1)), "Debye": (_ase.Debye, (0, 1, 1)),
    "GPa": (_ase.GPa, (1, -3, 0)), "kbar": (0.1 * _ase.GPa, (1, -3, 0)), "bar": (1e-4 * _ase.GPa, (1, -3, 0)),
}
_SUPERSCRIPTS = str.maketrans("⁻¹²³⁴⁵⁶⁷⁸⁹⁰", "-1234567890")
_FACTOR = re.compile(r"^(?P<name>[^\^]+?)(?:\^(?P<power>-?\d+)|(?P<sup>[⁻¹²³⁴⁵⁶⁷⁸⁹⁰]+))?$")
_DIMENSIONS = ("energy", "length", "charge")


def parse_unit(text: str) -> tuple[float, tuple[int, int, int]]:
    """``(value in clebsch's units, exponents of (energy, length, charge))`` of a unit such as ``kcal/mol/Å``."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a unit must be a non-empty string such as 'kcal/mol', got {text!r}")
    value, dims = 1.0, [0, 0, 0]
    for k, part in enumerate(text.strip().replace("**", "^").split("/")):
        sign = 1 if k == 0 else -1
        tokens = [t for t in re.split(r"[·*\s]+", part) if t]
        if not tokens:
            raise ValueError(f"cannot read the unit {text!r}: an empty part between '/'")
        for token in tokens:
            m = _FACTOR.match(token)
            name = m.group("name") if m else token
            if name not in KNOWN_UNITS:
                raise ValueError(f"unknown unit {name!r} in {text!r}; known: {', '.join(KNOWN_UNITS)}")
            power = 1
            if m.group("power"):
                power = int(m.group("power"))
            elif m.group("sup"):
                power = int(m.group("sup").translate(_SUPERSCRIPTS))
            v, d = KNOWN_UNITS[name]
            value *= v ** (sign * power)
            for i in range(3):
                dims[i] += sign * power * d[i]
    return value, tuple(dims)


def _dimension_text(dims) -> str:
    up = [f"{n}^{p}" if p != 1 else n for n, p in zip(_DIMENSIONS, dims) if p > 0]
    down = [f"{n}^{-p}" if p != -1 else n for n, p in zip(_DIMENSIONS, dims) if p < 0]
    text = " · ".join(up) or "1"
    if down:
        text += " / " + " / ".join(down)
    return ("an " if text[0] in "aeiou" else "a ") + text if text != "1" else "dimensionless"


def factor(source: str, target: str) -> float:
    """The number a value in unit ``source`` is multiplied by to be in unit ``target``."""
    v1, d1 = parse_unit(source)
    v2, d2 = parse_unit(target)
    if d1 != d2:
        raise ValueError(f"{source} is {_dimension_text(d1)} and {target} {_dimension_text(d2)}: "
                         "they cannot be converted")
    return v1 / v2


def unit_factors(units: dict | None, targets: dict | None = None) -> dict[str, float]:
    """``{name: factor}`` for a ``data.units`` mapping (target name or ``positions`` -> the file's unit).

    Each factor converts the file's unit to the one the target is stored in; a
    name that is neither a target nor ``positions``, a unit that cannot be read
    and a unit of the wrong dimension raise, naming the key.

    >>> unit_factors({"forces": "Ha/Bohr"})["forces"] > 51
    True
    """
    from ..targets import TARGETS

    declared = TARGETS if targets is None else targets
    out = {}
    for name, unit in (units or {}).items():
        where = f"data.units.{name}"
        if name == "positions":
            stored = "Å"
        elif name in declared:
            stored = declared[name].unit
        else:
            raise ValueError(f"{where}: {name!r} is neither a target nor 'positions'; targets: {sorted(declared)}")
        if not stored:
            raise ValueError(f"{where}: target {name!r} is declared without a unit, so there is nothing to convert "
                             f"{unit!r} to; give it one (model.targets.{name}.unit) or leave it out of data.units")
        try:
            if unit == stored:
                out[name] = 1.0
                continue
            out[name] = factor(unit, stored)
        except ValueError as err:
            raise ValueError(f"{where}: {err} (the target is stored in {stored})") from None
    return out
