"""The bundled water-cluster basis sets (PBE/def2-SVP AO basis, def2-universal-jkfit with l <= 3), shared."""

from pathlib import Path

import pytest

from clebsch.basis import GaussianBasis

BASIS_FILE = Path(__file__).parents[2] / "examples" / "water_clusters.basis.json"


@pytest.fixture(scope="module")
def ao():
    return GaussianBasis.from_file(BASIS_FILE, "ao")


@pytest.fixture(scope="module")
def aux():
    return GaussianBasis.from_file(BASIS_FILE, "aux")
