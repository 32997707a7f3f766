import pytest
import torch


@pytest.fixture(autouse=True)
def float64_default():
    """e3nn builds its constants in the default dtype: make the oracle float64."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
