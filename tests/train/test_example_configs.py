"""Every training config in examples/ is valid as written (schema, declared targets, basis files), and the
electronic-structure examples declare what their comments say."""

from pathlib import Path

import pytest

from clebsch.train.config import load_config

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_example_config_loads(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the examples name their files relative to the repository root
    config = load_config(path)
    for name, target in config.model.known_targets().items():
        if target.basis is not None and not target.matrix:
            assert target.conserve_electrons, f"{path.name}: density {name!r} without conserve_electrons"


def test_density_example_trains_the_density_alone(monkeypatch):
    monkeypatch.chdir(ROOT)
    config = load_config(ROOT / "examples" / "water_density.yaml")
    assert config.model.outputs == ["energy", "density"]
    assert {k for k, v in config.loss.weights.items() if v} == {"density"}
