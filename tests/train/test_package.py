import pytest
import torch

import clebsch
from clebsch.graph import batch
from clebsch.train.package import FORMAT_VERSION, PackageError, describe, load, read_package, save_package
from clebsch.train.trainer import train

from .conftest import quiet, tiny_config


@pytest.fixture(scope="module")
def trained(tiny_xyz, tmp_path_factory):
    run = tmp_path_factory.mktemp("pkg") / "run"
    result = train(tiny_config(tiny_xyz, run, training={"max_epochs": 2, "progress": False, "plots": False}), log=quiet)
    return run, result


def _graphs(tiny_xyz, model):
    from clebsch.data.dataset import AtomicDataset

    return AtomicDataset.from_file(tiny_xyz, model.cutoff, dtype=torch.float64).graphs[:3]


def test_round_trip_same_predictions(trained, tiny_xyz, tmp_path):
    run, _ = trained
    model = clebsch.load(run / "model.pt")
    assert not model.training
    g = batch(_graphs(tiny_xyz, model))
    first = model(g)
    again = load(save_package(model, tmp_path / "copy.pt"))
    second = again(g)
    torch.testing.assert_close(first["energy"], second["energy"])
    torch.testing.assert_close(first["forces"], second["forces"])
    info = describe(run / "model.pt")
    assert "schnet" in info and "H, C, O" in info and "cutoff           3.0" in info


def test_corrupted_truncated_newer_and_foreign(trained, tmp_path):
    run, _ = trained
    blob = (run / "model.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(PackageError, match="truncated"):
        load(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a model at all")
    with pytest.raises(PackageError, match="not a clebsch model"):
        load(garbage)
    foreign = tmp_path / "state.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), foreign)
    with pytest.raises(PackageError, match="not a clebsch packaged model"):
        load(foreign)
    data = read_package(run / "model.pt")
    data["format_version"] = FORMAT_VERSION + 1
    data["clebsch_version"] = "9.0.0"
    newer = tmp_path / "newer.pt"
    torch.save(data, newer)
    with pytest.raises(PackageError, match=r"clebsch 9\.0\.0 in package format 2.*Upgrade"):
        load(newer)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.pt")


def test_old_import_path_is_the_models_package():
    import clebsch.models.package as models_package
    import clebsch.train.package as train_package

    for name in ("load", "save_package", "read_package", "describe", "PackageError", "FORMAT_VERSION"):
        assert getattr(train_package, name) is getattr(models_package, name)
    assert clebsch.load is models_package.load


def test_packages_store_a_checksum_of_their_weights(trained):
    run, _ = trained
    data = read_package(run / "model.pt")
    from clebsch.models.package import weights_checksum

    assert data["weights_sha256"] == weights_checksum(data["state_dict"])
    assert "verified" in describe(run / "model.pt")


def test_training_checkpoints_are_named_not_called_corrupted(trained):
    run, _ = trained
    for name in ("last.pt", "best.pt"):
        path = run / "checkpoints" / name
        if path.exists():
            with pytest.raises(PackageError, match=f"{name} is a training checkpoint.*model.pt"):
                load(path)
