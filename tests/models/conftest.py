"""Shared fixtures for the model tests: small models of every family, in float64."""

import pytest
import torch

from clebsch.models import REPRESENTATIONS, families
from clebsch.models._registry import is_equivariant
from clebsch.testing import float64_model

FAMILIES = tuple(families(kind="geometric"))  # every registered geometric family is tested
# those whose outputs rotate as their targets declare (not the Cartesian baseline, which learns rotations from data)
EQUIVARIANT_FAMILIES = tuple(f for f in FAMILIES if is_equivariant(f))

# small but complete: every family at two layers and few channels, so the
# whole contract runs in seconds
SMALL = {
    "schnet": {"num_layers": 2, "channels": 8},
    "egnn": {"num_layers": 2, "channels": 8},
    "painn": {"num_layers": 2, "channels": 8},
    "nequip": {"num_layers": 2, "channels": 4, "lmax": 2},
    "segnn": {"num_layers": 2, "channels": 4, "lmax": 2},
    "mace": {"num_layers": 2, "channels": 4, "lmax": 2},
    "tensornet": {"num_layers": 2, "channels": 8},
    "allegro": {"num_layers": 2, "num_tensor_features": 4, "lmax": 2, "latent_dim": 16},
    "equivariant_transformer": {"num_layers": 2, "channels": 8, "num_heads": 2, "num_basis": 8},
    "visnet": {"num_layers": 2, "channels": 8, "num_heads": 2, "num_basis": 8},
    "dimenet": {"num_layers": 2, "hidden_channels": 8, "int_emb_size": 4, "basis_emb_size": 4, "out_emb_channels": 8,
                "num_spherical": 3, "num_radial": 4},
    "equiformer": {"num_layers": 2, "channels": 4, "num_heads": 2, "lmax": 2, "num_basis": 8, "radial_hidden": 16},
    "cartesian": {"num_layers": 2, "channels": 8},
}

OUTPUTS = ["energy", "forces", "stress", "dipole", "polarizability"]

# a declared target of each level, and the Born charges (a response of the dipole)
TARGETS = {
    "shielding": {"level": "atom", "cartesian": "ij", "unit": "ppm"},
    "gap": {"level": "structure", "irreps": "0e", "reduce": "mean", "unit": "eV"},
    "moment": {"level": "structure", "irreps": "1e + 2e"},
    "block": {"level": "edge", "irreps": "0e + 1o + 1e + 2e"},
}
ALL_OUTPUTS = OUTPUTS + ["born_charges", "charges"] + list(TARGETS)


def small_model(name, species=("H", "C", "O"), cutoff=3.0, seed=0, outputs=OUTPUTS, **extra):
    torch.manual_seed(seed)
    config = {
        "name": name,
        "species": list(species),
        "cutoff": cutoff,
        "atomic_energies": [-0.5 * (i + 1) for i in range(len(species))],
        "scale": 1.3,
        "outputs": list(outputs),
        **({"targets": {k: v for k, v in TARGETS.items() if k in outputs}} if set(TARGETS) & set(outputs) else {}),
        **SMALL.get(name, {}),
        **extra,
    }
    # random non-zero readouts, so no part of the network is trivially zero
    model = float64_model(config, seed, randomize_zeros=True)
    return model.eval()


@pytest.fixture(params=[f for f in FAMILIES], ids=list(FAMILIES))
def family(request):
    if request.param not in REPRESENTATIONS:
        pytest.fail(f"model family {request.param!r} is not registered")
    return request.param


@pytest.fixture(params=list(EQUIVARIANT_FAMILIES), ids=list(EQUIVARIANT_FAMILIES))
def equivariant_family(request):
    """The geometric families that are rotation-equivariant by design, for tests that rotate or reflect."""
    return request.param
