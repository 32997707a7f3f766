"""Reading structure files with errors that name the file and the frame."""

from __future__ import annotations

import os
from pathlib import Path

import ase.io

__all__ = ["read_structures"]


def _locate_xyz_problem(path: Path):
    """Scan an (ext)xyz file's frame layout; return ``(frame, line, message)`` of the first break, or None."""
    with open(path) as fh:
        lines = fh.readlines()
    line, frame = 0, 0
    while line < len(lines):
        if not lines[line].strip():
            if all(not rest.strip() for rest in lines[line:]):
                return None
            return frame, line + 1, "unexpected blank line where an atom count should be"
        try:
            n = int(lines[line].split()[0])
        except ValueError:
            return frame, line + 1, f"expected an atom count, got {lines[line].strip()[:60]!r}"
        body = lines[line + 2: line + 2 + n]
        if len(body) < n or line + 1 >= len(lines):
            return frame, line + 1, f"truncated: {n} atoms announced, {max(len(body), 0)} atom lines present"
        line += n + 2
        frame += 1
    return None


def read_structures(path, index=":", format: str | None = None) -> list:
    """Read every structure of an ASE-readable file (extxyz first), frame by frame.

    Parameters
    ----------
    path : str or Path
    index : str
        ASE index (``":"`` for all frames).
    format : str, optional
        ASE format name; guessed from the file otherwise (``.xyz`` is read as extxyz).

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        A frame cannot be parsed (the message names the file, the 0-based frame
        and, for xyz files, the line), or the file holds no structure.

    Examples
    --------
    >>> import tempfile, os
    >>> from ase.build import molecule
    >>> path = os.path.join(tempfile.mkdtemp(), "w.xyz")
    >>> ase.io.write(path, [molecule("H2O")] * 2)
    >>> len(read_structures(path))
    2
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"structure file not found: '{path}'")
    if path.is_dir():
        raise ValueError(f"'{path}' is a directory, not a structure file")
    if format is None and path.suffix.lower() in (".xyz", ".extxyz"):
        format = "extxyz"
    frames = []
    try:
        for atoms in ase.io.iread(os.fspath(path), index=index, format=format):
            frames.append(atoms)
    except Exception as err:  # ASE raises many kinds; re-raise with the location
        frame, where = len(frames), ""
        if format in ("extxyz", "xyz"):
            found = _locate_xyz_problem(path)
            if found is not None and found[0] >= len(frames):
                frame, line, why = found
                where = f", line {line}: {why}"
        raise ValueError(
            f"cannot read '{path}': frame {frame} (0-based) is malformed{where} ({type(err).__name__}: {err})"
        ) from err
    if not frames:
        raise ValueError(f"'{path}' holds no structures (empty dataset)")
    return frames
