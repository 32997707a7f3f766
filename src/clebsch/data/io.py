"""Reading structure files with errors that name the file and the frame.

Before ASE parses an (ext)xyz file, its frame layout is walked once (a
streaming pass over the lines, far cheaper than the parse): an atom count
larger than the lines that follow (which would make ASE's reader spin through
two billion empty reads), a count line that is not a number, a blank line
between frames (where ASE silently stops reading) and bytes that are not text
are reported at once, naming the file, the frame and the line.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import ase.io

__all__ = ["read_structures", "read_structure", "check_elements"]

_XYZ_FORMATS = ("extxyz", "xyz")
_SNIFF_BYTES = 65536


class _NotText(ValueError):
    pass


def _decode(raw: bytes, path: Path, line: int, offset: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _NotText(
            f"'{path}' is not a text structure file: line {line} holds bytes that are not UTF-8 text (byte "
            f"0x{raw[err.start]:02x} at offset {offset + err.start} of the file); is it a binary file, or the "
            f"wrong file?"
        ) from None


def _open_binary(path: Path):
    """``path`` opened for reading bytes, decompressed when its suffix says so."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        import gzip

        return gzip.open(path, "rb")
    if suffix == ".bz2":
        import bz2

        return bz2.open(path, "rb")
    if suffix == ".xz":
        import lzma

        return lzma.open(path, "rb")
    return open(path, "rb")


def _locate_xyz_problem(path: Path):
    """Walk an (ext)xyz file's frame layout; return ``(frame, line, message)`` of the first break, or None.

    Streams the file (a wrong atom count of two billion costs one pass over
    the lines that are there, not two billion reads). Raises ``_NotText`` when
    a line is not UTF-8.
    """
    line, frame, offset = 0, 0, 0
    with _open_binary(path) as fh:
        while True:
            raw = fh.readline()
            if not raw:
                return None
            line += 1
            text = _decode(raw, path, line, offset)
            offset += len(raw)
            if not text.strip():
                blank = line
                for raw in fh:
                    line += 1
                    if raw.strip():
                        return frame, blank, (
                            f"blank line between frames (frame {frame} would start here; line {line} holds more "
                            f"data, which ASE would silently drop)"
                        )
                return None
            try:
                n = int(text.split()[0])
            except ValueError:
                return frame, line, f"expected an atom count, got {text.strip()[:60]!r}"
            if n < 0:
                return frame, line, f"the atom count is negative ({n})"
            count_line = line
            present = 0
            for raw in itertools.islice(fh, n + 1):  # the comment line and the atom lines
                line += 1
                present += 1
                _decode(raw, path, line, offset)
                offset += len(raw)
            if present < n + 1:
                return frame, count_line, (
                    f"truncated: {n} atoms announced, {max(present - 1, 0)} atom lines present "
                    f"(the file was cut short, or the atom count is wrong)"
                )
            frame += 1


def _binary_sniff(path: Path) -> str | None:
    """A description of why ``path`` looks binary (a NUL byte, or bytes that are not UTF-8), or None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError:
        return None
    nul = head.find(b"\0")
    if nul >= 0:
        return f"a NUL byte at offset {nul}"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:  # not merely a multi-byte character cut by the sniff window
            return f"byte 0x{head[err.start]:02x} at offset {err.start} is not UTF-8 text"
    return None


def _read(path: Path, index, format: str | None) -> list:
    """The frames of ``path`` selected by ``index`` (possibly none), with located errors."""
    if not path.exists():
        raise FileNotFoundError(f"structure file not found: '{path}'")
    if path.is_dir():
        raise ValueError(f"'{path}' is a directory, not a structure file")
    plain = path.with_suffix("") if path.suffix.lower() in (".gz", ".bz2", ".xz") else path
    if format is None and plain.suffix.lower() in (".xyz", ".extxyz"):
        format = "extxyz"
    if format in _XYZ_FORMATS:
        try:
            found = _locate_xyz_problem(path)
        except _NotText as err:
            raise ValueError(str(err)) from None
        if found is not None:
            frame, line, why = found
            raise ValueError(f"cannot read '{path}': frame {frame} (0-based) is malformed, line {line}: {why}")
    frames = []
    source = os.fspath(path)
    if plain is not path:  # decompressed once in memory: ASE re-reads a compressed stream per frame
        import io

        with _open_binary(path) as fh:
            source = io.StringIO(fh.read().decode("utf-8", errors="replace"))
        if format is None:
            format = ase.io.formats.filetype(os.fspath(plain), read=False)
    try:
        for atoms in ase.io.iread(source, index=index, format=format):
            frames.append(atoms)
    except Exception as err:  # ASE raises many kinds; re-raise with the location
        binary = _binary_sniff(path)
        if binary is not None and (format is None or isinstance(err, UnicodeDecodeError)):
            raise ValueError(
                f"'{path}' is not a structure file ASE can read: it holds binary data ({binary}) and is not one of "
                f"the binary formats ASE knows (.traj, .db, ...); is it the wrong file?"
            ) from None
        frame = len(frames)
        raise ValueError(
            f"cannot read '{path}': frame {frame} (0-based) is malformed ({type(err).__name__}: {err})"
        ) from err
    return frames


def read_structures(path, index=":", format: str | None = None) -> list:
    """Read every structure of an ASE-readable file (extxyz first), frame by frame.

    Parameters
    ----------
    path : str or Path
        A file; ``file.xyz@0:100`` selects frames as ASE does (the slice after the last ``@``,
        when no file of the whole name exists). Compressed files (``.gz``, ``.bz2``, ``.xz``) are read as
        the format of the name without that suffix.
    index : str or int
        ASE index (``":"`` for all frames, ``"-1"`` or ``-1`` for the last).
    format : str, optional
        ASE format name; guessed from the file otherwise (``.xyz`` is read as extxyz).

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        A frame cannot be parsed (the message names the file, the 0-based frame
        and, for xyz files, the line), the file is not a text file where one is
        expected, or it holds no structure.

    Examples
    --------
    >>> import tempfile, os
    >>> from ase.build import molecule
    >>> path = os.path.join(tempfile.mkdtemp(), "w.xyz")
    >>> ase.io.write(path, [molecule("H2O")] * 2)
    >>> len(read_structures(path))
    2
    """
    path, index = _split_index(Path(path), index)
    frames = _read(path, index, format)
    if not frames:
        if index not in (":", slice(None)):
            raise ValueError(f"'{path}' holds no structures in the selection {index!r}")
        raise ValueError(f"'{path}' holds no structures (empty dataset)")
    return frames


def _split_index(path: Path, index):
    """``file@slice`` -> (file, slice) when ``file@slice`` itself does not exist."""
    name = str(path)
    if "@" not in name or path.exists() or index not in (":", slice(None)):
        return path, index
    base, _, selection = name.rpartition("@")
    if not selection or not all(c.isdigit() or c in ":-" for c in selection):
        return path, index
    return Path(base), selection


def read_structure(path, frame: int = 0, format: str | None = None):
    """One frame (0-based; negative counts from the end) of a structure file, checked as :func:`read_structures`.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        The file cannot be read, or has no frame ``frame``, or the frame has no atoms.

    Examples
    --------
    >>> import tempfile, os
    >>> from ase.build import molecule
    >>> path = os.path.join(tempfile.mkdtemp(), "w.xyz")
    >>> ase.io.write(path, [molecule("H2O"), molecule("CH4")])
    >>> read_structure(path, -1).get_chemical_formula()
    'CH4'
    """
    try:
        frame = int(frame)
    except (TypeError, ValueError):
        raise ValueError(f"frame must be an integer, got {frame!r}") from None
    path = Path(path)

    def missing(n: int) -> ValueError:
        return ValueError(f"structure file '{path}' has {n} frame{'s' if n != 1 else ''}; there is no frame {frame} "
                          f"(0-based)")

    try:
        frames = _read(path, frame, format)
    except ValueError:
        if frame in (0, -1):
            raise
        n = len(_read(path, ":", format))  # some single-frame readers fail on any other index
        if -n <= frame < n:
            raise
        raise missing(n) from None
    if not frames:
        raise missing(len(_read(path, ":", format)))
    atoms = frames[0]
    if len(atoms) == 0:
        raise ValueError(f"structure file '{path}', frame {frame}, has no atoms")
    return atoms


def check_elements(frames, species, path, first_frame: int = 0) -> None:
    """Raise ``ValueError`` naming the file, frame, atom and element of the first atom whose element is not in
    ``species`` (the atomic numbers a model knows). ``frames``: ASE ``Atoms`` or graphs (anything with
    ``numbers``), frame ``k`` of the list being frame ``first_frame + k`` of the file."""
    from ase.data import chemical_symbols

    known = {int(z) for z in species}
    for k, frame in enumerate(frames):
        numbers = [int(z) for z in (frame.numbers.tolist() if hasattr(frame.numbers, "tolist") else frame.numbers)]
        bad = next((i for i, z in enumerate(numbers) if z not in known), None)
        if bad is not None:
            z = numbers[bad]
            name = chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"atomic number {z}"
            raise ValueError(f"file '{path}', frame {first_frame + k}, atom {bad}: {name} (Z={z}) is an element "
                             f"this model was not trained on; it knows {[chemical_symbols[s] for s in sorted(known)]}")
