import warnings
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from data_helpers import water_file, water_frames  # noqa: F401 (fixture)

from clebsch.data import AtomicDataset, check_net_forces, key_map, read_dataset, read_structures

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_read_dataset_targets_config_type_and_units(water_file):
    graphs = read_dataset(water_file, cutoff=3.0)
    assert len(graphs) == 6
    assert graphs[1].targets["energy"].item() == pytest.approx(-13.9)
    assert graphs[0].targets["forces"].shape == (3, 3)
    assert [g.config_type[0] for g in graphs[:2]] == ["vapour", "water"]
    ref = water_frames()
    assert np.allclose(graphs[3].targets["forces"].numpy(), ref[3].arrays["forces"], atol=1e-6)


def test_key_map_custom_names(tmp_path):
    path = tmp_path / "ref.xyz"
    frames = water_frames(energy_key="REF_energy", forces_key="REF_forces")
    for a in frames:
        a.info["REF_dipole"] = np.array([0.1, 0.0, -0.2])
        a.arrays["hirshfeld"] = np.array([0.3, -0.15, -0.15])
    ase.io.write(path, frames, format="extxyz")
    keys = key_map(energy_key="REF_energy", forces_key="REF_forces", dipole_key="REF_dipole",
                   extra_keys={"hirshfeld": "hirshfeld"})
    ds = AtomicDataset.from_file(path, 3.0, keys=keys)
    g = ds[0]
    assert g.targets["energy"].item() == pytest.approx(-14.0)
    assert g.targets["dipole"][0].tolist() == pytest.approx([0.1, 0.0, -0.2])
    assert "hirshfeld" in g.per_atom_targets and g.targets["hirshfeld"].shape == (3,)


def test_missing_key_names_key_frame_and_existing_keys(tmp_path):
    frames = water_frames()
    del frames[4].info["energy"]
    path = tmp_path / "gap.xyz"
    ase.io.write(path, frames, format="extxyz")
    with pytest.raises(ValueError) as err:
        read_dataset(path, 3.0)
    msg = str(err.value)
    assert "missing energy key 'energy'" in msg and "frame 4" in msg and str(path) in msg
    assert "forces" in msg and "config_type" in msg  # the keys that do exist
    with pytest.raises(ValueError, match=r"missing forces key 'F'.*frame 0"):
        read_dataset(path, 3.0, keys=key_map(forces_key="F"))


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nope.xyz"):
        read_dataset("/nonexistent/nope.xyz", 3.0)
    with pytest.raises(FileNotFoundError, match="nope.xyz"):
        AtomicDataset.from_file("/nonexistent/nope.xyz", 3.0, cache_dir="/tmp")


def _lines(water_file):
    return Path(water_file).read_text().splitlines()


def test_truncated_file_names_file_and_frame(water_file, tmp_path):
    lines = _lines(water_file)
    path = tmp_path / "truncated.xyz"
    path.write_text("\n".join(lines[: 5 * 5 + 3]) + "\n")  # frame 5 cut after one atom
    with pytest.raises(ValueError, match=r"truncated.xyz.*frame 5 .*line 26.*truncated: 3 atoms announced, 1"):
        read_structures(path)


def test_malformed_number_and_header(water_file, tmp_path):
    lines = _lines(water_file)
    bad = list(lines)
    bad[5 * 2 + 3] = "H 0.1 zero 0.3 0.0 0.0 0.0"  # an atom line of frame 2
    path = tmp_path / "bad_number.xyz"
    path.write_text("\n".join(bad) + "\n")
    with pytest.raises(ValueError, match=r"bad_number.xyz.*frame 2 "):
        read_dataset(path, 3.0)
    bad = list(lines)
    bad[5 * 4] = "three"  # the atom count of frame 4
    path = tmp_path / "bad_header.xyz"
    path.write_text("\n".join(bad) + "\n")
    with pytest.raises(ValueError, match=r"bad_header.xyz.*frame 4 .*line 21.*expected an atom count, got 'three'"):
        read_dataset(path, 3.0)


def test_non_finite_and_overlapping_atoms_name_file_frame_atom(tmp_path):
    frames = water_frames()
    frames[3].positions[1] = [np.nan, 0.0, 0.0]
    path = tmp_path / "nan.xyz"
    ase.io.write(path, frames, format="extxyz")
    with pytest.raises(ValueError, match=r"atom 1 has non-finite position.*nan.xyz', frame 3"):
        read_dataset(path, 3.0)
    frames = water_frames()
    frames[2].positions[2] = frames[2].positions[0] + [0.05, 0.0, 0.0]
    path = tmp_path / "close.xyz"
    ase.io.write(path, frames, format="extxyz")
    with pytest.raises(ValueError, match=r"atoms 0 and 2 are 0.05 Å apart.*close.xyz', frame 2"):
        read_dataset(path, 3.0)


def test_empty_dataset(tmp_path):
    path = tmp_path / "empty.xyz"
    path.write_text("")
    with pytest.raises(ValueError, match="empty.xyz.*no structures"):
        read_dataset(path, 3.0)
    with pytest.raises(ValueError, match="empty dataset"):
        AtomicDataset([])


def test_cache_skips_preprocessing_and_tracks_changes(water_file, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = AtomicDataset.from_file(water_file, 3.0, cache_dir=cache)
    assert len(list(cache.glob("*.pt"))) == 1
    import clebsch.data.dataset as module

    def boom(*a, **k):
        raise AssertionError("preprocessing ran again")

    monkeypatch.setattr(module, "read_dataset", boom)
    second = AtomicDataset.from_file(water_file, 3.0, cache_dir=cache)
    assert len(second) == len(first)
    assert torch.equal(second[2].edge_index, first[2].edge_index)
    assert torch.equal(second[2].targets["forces"], first[2].targets["forces"])
    with pytest.raises(AssertionError, match="ran again"):  # another cutoff is another cache entry
        AtomicDataset.from_file(water_file, 2.5, cache_dir=cache)
    monkeypatch.undo()
    ase.io.write(water_file, water_frames(n=4), format="extxyz")  # the file changes
    assert len(AtomicDataset.from_file(water_file, 3.0, cache_dir=cache)) == 4


def test_bundled_examples_load():
    ethanol = AtomicDataset.from_file(EXAMPLES / "ethanol_xtb.xyz", 5.0, index=":40")
    g = ethanol[0]
    assert sorted(g.numbers.tolist()) == [1] * 6 + [6] * 2 + [8]
    assert g.targets["dipole"].shape == (1, 3) and g.targets["forces"].shape == (9, 3)
    energies = torch.cat([x.targets["energy"] for x in ethanol])
    assert -320 < float(energies.mean()) < -300 and float(energies.std()) > 0.05
    assert len(read_structures(EXAMPLES / "ethanol_xtb.xyz")) >= 300
    assert (EXAMPLES / "ethanol_xtb.xyz").stat().st_size <= 2_000_000
    cu = AtomicDataset.from_file(EXAMPLES / "cu_emt.xyz", 4.0)
    assert len(cu) == 50 and cu[0].num_atoms == 32 and cu[0].pbc.all()
    s = cu[0].targets["stress"][0]
    assert torch.allclose(s, s.T) and float(s.abs().max()) > 0


def test_cache_keeps_targets_per_structure(tmp_path):
    frames = water_frames(n=3)
    frames[1].info["dipole"] = np.array([0.0, 0.1, 0.2])
    path = tmp_path / "some_dipoles.xyz"
    ase.io.write(path, frames, format="extxyz")
    cache = tmp_path / "cache"
    fresh = AtomicDataset.from_file(path, 3.0, cache_dir=cache)
    cached = AtomicDataset.from_file(path, 3.0, cache_dir=cache)
    assert [sorted(g.targets) for g in cached] == [sorted(g.targets) for g in fresh]
    assert "dipole" in cached[1].targets and "dipole" not in cached[0].targets
    assert torch.equal(cached[1].targets["dipole"], fresh[1].targets["dipole"])


def test_forces_that_do_not_sum_to_zero_warn_with_file_and_frame(tmp_path):
    """Constraint-adjusted forces (ASE's FixCom) carry a part no model can learn: the reader says so."""
    frames = water_frames()
    frames[4].arrays["forces"] = frames[4].arrays["forces"] + np.array([0.0, 0.5, 0.0])  # a net force on one frame
    path = tmp_path / "drift.xyz"
    ase.io.write(path, frames, format="extxyz")
    with pytest.warns(UserWarning, match=r"drift\.xyz'.*in 1 of 6 frames.*worst: frame 4.*apply_constraint=False"):
        read_dataset(path, cutoff=3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_dataset(EXAMPLES / "ethanol_xtb.xyz", cutoff=4.0, index=":50")  # the bundled data: gradients
    assert check_net_forces(read_dataset(EXAMPLES / "cu_emt.xyz", cutoff=4.0)) == []


def test_compressed_files_and_frame_selections(tmp_path):
    """``.xz`` / ``.gz`` files read like the plain ones; ``file@start:stop`` selects frames as ASE does."""
    import gzip
    import lzma

    import ase.io
    from ase.build import molecule

    from clebsch.data.io import read_structures

    plain = tmp_path / "m.xyz"
    ase.io.write(plain, [molecule("H2O"), molecule("CH4"), molecule("NH3")])
    (tmp_path / "m.xyz.xz").write_bytes(lzma.compress(plain.read_bytes()))
    (tmp_path / "m.xyz.gz").write_bytes(gzip.compress(plain.read_bytes()))
    for name in ("m.xyz.xz", "m.xyz.gz"):
        frames = read_structures(tmp_path / name)
        assert [a.get_chemical_formula() for a in frames] == ["H2O", "CH4", "H3N"]
    assert [a.get_chemical_formula() for a in read_structures(f"{tmp_path}/m.xyz.xz@1:3")] == ["CH4", "H3N"]
    with pytest.raises(ValueError, match="holds no structures in the selection '5:'"):
        read_structures(f"{plain}@5:")
    broken = plain.read_text().splitlines()
    broken[0] = "7"  # the first frame claims more atoms than it has: the layout check reads the decompressed lines
    (tmp_path / "bad.xyz.xz").write_bytes(lzma.compress("\n".join(broken).encode() + b"\n"))
    with pytest.raises(ValueError, match=r"bad.xyz.xz': frame \d \(0-based\) is malformed, line \d+"):
        read_structures(tmp_path / "bad.xyz.xz")
