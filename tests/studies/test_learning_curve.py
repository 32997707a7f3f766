"""Learning curves: the power-law fit and its error bar, nested seeded subsets with fixed validation and test
sets, clear errors for bad input, and a tiny end-to-end study from the command-line entry point."""

import argparse
from pathlib import Path

import ase.io
import numpy as np
import pytest
import yaml

from clebsch.data.io import read_structures
from clebsch.studies.learning_curve import (
    add_arguments,
    fit_power_law,
    learning_curve,
    main,
    prepare_subsets,
    read_csv,
)
from clebsch.train.config import load_config

ETHANOL = Path(__file__).resolve().parents[2] / "examples" / "ethanol_xtb.xyz"


def synthetic(beta, prefactor, sizes, repeats, noise, gen):
    x = np.repeat(np.asarray(sizes, dtype=float), repeats)
    return x, prefactor * x ** (-beta) * np.exp(noise * gen.standard_normal(x.size))


def test_fit_recovers_an_exact_power_law():
    sizes = [25, 50, 100, 200, 400]
    x, y = synthetic(0.62, 1800.0, sizes, 2, 0.0, np.random.default_rng(0))
    fit = fit_power_law(x, y)
    assert fit.beta == pytest.approx(0.62, abs=1e-12)
    assert fit.prefactor == pytest.approx(1800.0, rel=1e-10)
    assert fit.beta_err < 1e-10 and fit.n_points == 10
    np.testing.assert_allclose(fit(sizes), 1800.0 * np.asarray(sizes, dtype=float) ** -0.62, rtol=1e-10)


def test_fit_recovers_a_noisy_power_law_within_its_error_bar():
    gen = np.random.default_rng(7)
    x, y = synthetic(0.5, 900.0, [25, 50, 100, 200, 400], 3, 0.08, gen)
    fit = fit_power_law(x, y)
    assert 0 < fit.beta_err < 0.1
    assert abs(fit.beta - 0.5) < fit.beta_err * 2  # well inside two standard errors
    assert fit.prefactor_err > 0 and fit.residual_std == pytest.approx(0.08, rel=0.5)


def test_the_error_bar_is_calibrated():
    """Over many synthetic curves, one standard error covers the true exponent about two times in three."""
    gen = np.random.default_rng(1)
    inside = []
    for _ in range(400):
        x, y = synthetic(0.7, 500.0, [25, 50, 100, 200, 400], 3, 0.1, gen)
        fit = fit_power_law(x, y)
        inside.append(abs(fit.beta - 0.7) <= fit.beta_err)
    # the t distribution with 13 degrees of freedom puts 66.5% within one standard error
    assert 0.58 < np.mean(inside) < 0.75


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match=r"error 0.0 \(entry 1\) is not a positive finite number"):
        fit_power_law([10, 20], [1.0, 0.0])
    with pytest.raises(ValueError, match=r"at least two distinct sizes"):
        fit_power_law([10, 10], [1.0, 0.9])
    with pytest.raises(ValueError, match=r"3 sizes but 2 errors"):
        fit_power_law([10, 20, 40], [1.0, 0.9])
    assert np.isnan(fit_power_law([10, 20], [1.0, 0.5]).beta_err)  # two points: no scatter to measure


@pytest.fixture(scope="module")
def frames_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "ethanol40.xyz"
    ase.io.write(path, read_structures(ETHANOL)[:40], format="extxyz")
    return path


def config_file(tmp_path, data, name="schnet", **model):
    config = {"seed": 1, "device": "cpu", "dtype": "float32",
              "model": {"name": name, "cutoff": 3.5, "num_layers": 1, "channels": 8, **model},
              "data": {"train": str(data), "valid_fraction": 0.1, "test_fraction": 0.25, "batch_size": 5},
              "training": {"max_epochs": 2, "ema_decay": None}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_subsets_are_nested_seeded_and_share_fixed_validation_and_test_sets(tmp_path, frames_file):
    cfg = load_config(config_file(tmp_path, frames_file))
    subsets = prepare_subsets(cfg, repeats=2, out_dir=tmp_path / "study", seed=3)
    original = read_structures(frames_file)
    idx = subsets.indices
    assert len(idx["valid"]) == 4 and len(idx["test"]) == 10 and subsets.pool_size == 26
    for r in range(2):
        pool = idx[f"train_r{r}"]
        assert sorted(pool) == sorted(set(range(40)) - set(idx["valid"]) - set(idx["test"]))
        small, large = read_structures(subsets.train(r, 5)), read_structures(subsets.train(r, 12))
        assert len(small) == 5 and len(large) == 12
        for k, atoms in enumerate(small):  # the size-5 set is the start of the size-12 set
            np.testing.assert_array_equal(atoms.positions, large[k].positions)
            np.testing.assert_array_equal(atoms.positions, original[pool[k]].positions)
        np.testing.assert_array_equal(large[11].get_forces(), original[pool[11]].get_forces())
    assert idx["train_r0"][:5] != idx["train_r1"][:5]  # each repeat draws its own subsets
    test = read_structures(subsets.test)
    assert [a.get_potential_energy() for a in test] == [original[i].get_potential_energy() for i in idx["test"]]
    # another config on the same file gets the same sets; another seed another split
    other = load_config(config_file(tmp_path, frames_file, name="cartesian"))
    assert prepare_subsets(other, repeats=2, out_dir=tmp_path / "study", seed=3).indices == idx
    assert prepare_subsets(cfg, repeats=2, out_dir=tmp_path / "study", seed=4).indices["test"] != idx["test"]
    with pytest.raises(ValueError, match=r"size 27 is outside 1..26"):
        subsets.train(0, 27)


def test_bad_input_is_named_before_anything_trains(tmp_path, frames_file):
    path = config_file(tmp_path, frames_file)
    out = tmp_path / "study"
    with pytest.raises(ValueError, match=r"unknown metric 'force_mae'; allowed: energy_mae, energy_rmse"):
        learning_curve(path, [5, 10], repeats=1, out_dir=out, metric="force_mae")
    with pytest.raises(ValueError, match=r"sizes \[30, 60\] exceed the training pool of .*schnet.yaml: data.train "
                                         r"'.*ethanol40.xyz' holds 40 structures, of which 4 go to validation and 10 "
                                         r"to test, leaving 26 for training"):
        learning_curve(path, [10, 30, 60], repeats=1, out_dir=out)
    with pytest.raises(ValueError, match=r"every size must be a positive number of training structures, got 0"):
        learning_curve(path, [0, 10], repeats=1, out_dir=out)
    with pytest.raises(ValueError, match=r"at least two sizes"):
        learning_curve(path, [10], repeats=1, out_dir=out)
    with pytest.raises(ValueError, match=r"repeats must be a positive whole number"):
        learning_curve(path, [5, 10], repeats=0, out_dir=out)
    with pytest.raises(ValueError, match=r"does not predict 'dipole'"):
        learning_curve(path, [5, 10], repeats=1, out_dir=out, metric="dipole_mae")
    parser = add_arguments(argparse.ArgumentParser())
    with pytest.raises(ValueError, match=r"--sizes: 'x5' is not a whole number"):
        main(parser.parse_args([str(path), "--sizes", "x5,10", "--out", str(out)]))
    assert not (out / "runs").exists()


def test_end_to_end_from_the_command_line(tmp_path, frames_file, capsys):
    path = config_file(tmp_path, frames_file)
    out = tmp_path / "study"
    parser = add_arguments(argparse.ArgumentParser())
    argv = [str(path), "--sizes", "5,10", "--repeats", "1", "--out", str(out), "--set", "training.max_epochs=2",
            "--valid", "4", "--test", "10", "--labels", "SchNet"]
    assert main(parser.parse_args(argv)) == 0
    printed = capsys.readouterr().out
    assert "SchNet" in printed and "β =" in printed
    rows = read_csv(out / "learning_curve.csv")
    assert [(r["label"], r["size"], r["repeat"], r["metric"]) for r in rows] == [
        ("SchNet", 5, 0, "forces_mae"), ("SchNet", 10, 0, "forces_mae")]
    assert all(r["value"] > 0 and r["unit"] == "meV/Å" for r in rows)
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fits = (out / "fits.csv").read_text().splitlines()
    assert fits[0].startswith("label,metric,unit,beta,beta_err") and fits[1].startswith("SchNet,forces_mae")
    run = out / "runs" / "SchNet" / "n10_r0"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["train"].endswith("train_r0.xyz@0:10") and saved["data"]["valid_fraction"] == 0.0
    assert saved["seed"] == 1
    # a finished study is read back, not trained again
    log = (run / "train.log").read_text()
    again = learning_curve({"SchNet": path}, [5, 10], repeats=1, out_dir=out, valid=4, test=10,
                           overrides=["training.max_epochs=2"], plot=False)
    assert [r["value"] for r in again.rows] == pytest.approx([r["value"] for r in rows], rel=1e-6)
    assert (run / "train.log").read_text() == log
    # ... and a changed config is not mixed into it
    with pytest.raises(ValueError, match=r"holds a run of another config \(sections differing: training\)"):
        learning_curve({"SchNet": path}, [5, 10], repeats=1, out_dir=out, valid=4, test=10,
                       overrides=["training.max_epochs=3"])
