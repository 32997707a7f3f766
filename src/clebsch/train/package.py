"""The packaged model, re-exported from :mod:`clebsch.models.package`.

Packaged models live with the models so that the calculators can read them
without importing training; ``from clebsch.train.package import load`` keeps
working.
"""

from ..models.package import (
    FORMAT,
    FORMAT_VERSION,
    UNITS,
    PackageError,
    describe,
    load,
    read_package,
    save_package,
    weights_checksum,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "UNITS",
    "PackageError",
    "save_package",
    "read_package",
    "load",
    "describe",
    "weights_checksum",
]
