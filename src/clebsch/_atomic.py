"""Writing files so that a killed process never leaves half of one.

Every writer goes through a temporary file in the same folder and
:func:`os.replace`, which is atomic on POSIX file systems: a reader (or a run
killed with ``kill -9`` at any moment) sees either the previous file or the
complete new one, never a mixture.

- :func:`atomic_open` — a file handle whose content appears at ``path`` only
  when the ``with`` block ends without an error.
- :func:`atomic_save` — ``torch.save`` through a temporary file.
- :func:`atomic_write_text` — a text file through a temporary file.
- :func:`partial_path` — the visible name under which a long-running writer
  (an MD trajectory) grows its output before moving it into place.
- :func:`check_output_path` — refuse an output that is a directory, lies in a
  missing or read-only folder, or is the same file as one of the inputs.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_open", "atomic_save", "atomic_write_text", "partial_path", "check_output_path", "same_file"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path, mode: str = "w"):
    """Open a temporary file beside ``path``; on a clean exit it is synced and renamed to ``path``.

    On an error (or a ``kill -9``) ``path`` keeps its previous content; the
    temporary file is removed (after a kill, a hidden ``.NAME.*.tmp`` may stay).
    The new file gets the usual permissions (``0o666`` less the umask).

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.txt")
    >>> with atomic_open(path) as handle:
    ...     _ = handle.write("hello")
    >>> open(path).read()
    'hello'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj, path) -> None:
    """``torch.save(obj, path)`` through a temporary file and :func:`os.replace`."""
    import torch

    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)


def atomic_write_text(text: str, path) -> None:
    """Write a text file through a temporary file and :func:`os.replace`.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.txt")
    >>> atomic_write_text("hello\\n", path)
    >>> open(path).read()
    'hello\\n'
    """
    with atomic_open(path, "w") as handle:
        handle.write(text)


def partial_path(path) -> str:
    """Where a long-running writer grows ``path`` before moving it into place: ``path + ".tmp"``.

    The name is visible and predictable, so the frames of a run killed with
    ``kill -9`` can still be read from it (the file at ``path`` itself is then
    the one from before the run).

    >>> partial_path("runs/md.traj")
    'runs/md.traj.tmp'
    """
    return os.fspath(path) + ".tmp"


def same_file(a, b) -> bool:
    """Whether two paths name the same file (after resolving links and ``..``)."""
    a, b = os.fspath(a), os.fspath(b)
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def check_output_path(path, what: str, inputs: dict | None = None, others: dict | None = None) -> str:
    """Check that ``path`` can be written as output ``what``, before anything is computed.

    Parameters
    ----------
    path : str or os.PathLike
    what : str
        Name of the output in messages, e.g. ``"trajectory"``.
    inputs : dict, optional
        ``{name: path}`` of the inputs the output must not overwrite.
    others : dict, optional
        ``{name: path}`` of the other outputs of the same command (two outputs
        cannot share a file).

    Raises
    ------
    ValueError
        ``path`` is the same file as an input or another output.
    IsADirectoryError, FileNotFoundError, PermissionError
        ``path`` is a directory, its folder does not exist, or the folder is
        not writable.
    """
    path = os.fspath(path)
    for kind, named in (("input", inputs or {}), ("output", others or {})):
        for name, other in named.items():
            if other is not None and same_file(path, other):
                raise ValueError(
                    f"{what} {path!r} is the same file as the {name} {os.fspath(other)!r}; "
                    f"writing it would destroy the {kind} -- choose another name"
                )
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path!r} is a directory; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {what} {path!r}: folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {what} {path!r}: folder {folder!r} is not writable")
    return path
