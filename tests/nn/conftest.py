import pytest
import torch


@pytest.fixture(autouse=True)
def float64_default():
    """Build layers in float64 so their Clebsch-Gordan buffers are exact for 1e-10 comparisons."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
