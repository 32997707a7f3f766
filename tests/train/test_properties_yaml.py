"""The bundled many-property example trains from YAML alone, and evaluate reports every target per config_type."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "clebsch", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_properties_example_trains_and_evaluates(tmp_path):
    config = ROOT / "examples" / "molecules_properties.yaml"
    data = ROOT / "examples" / "molecules_pyscf.xyz"
    train = run("train", str(config), "--set", f"run_dir={tmp_path / 'run'}", "--set", f"data.train={data}",
                "--set", "data.max_train=48", "--set", "training.max_epochs=2", "--set", "training.max_time=null",
                "--set", "model.num_layers=1", "--set", "model.channels=4", "--set", "training.plots=false",
                cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-2000:]
    model = tmp_path / "run" / "model.pt"
    info = run("info", str(model), cwd=tmp_path)
    assert "shielding: per atom, Cartesian 'ij' (1x0e+1x1e+1x2e), ppm, head" in info.stdout
    assert "gap: per structure intensive, 1x0e, eV, head" in info.stdout
    out = tmp_path / "metrics.json"
    ev = run("evaluate", str(model), str(data), "--json", str(out), "--batch-size", "32", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr[-2000:]
    header = ev.stdout.splitlines()[1]
    for column in ("E MAE meV", "F MAE meV/Å", "mu MAE me·Å", "alpha MAE Å³", "q MAE me", "shielding MAE ppm",
                   "gap MAE eV"):
        assert column in header, column
    metrics = json.loads(out.read_text())
    assert {"all", "H2O", "CH3CH2OH", "CO"} <= set(metrics)
    for name in ("energy", "forces", "dipole", "polarizability", "charges", "shielding", "gap"):
        assert metrics["all"][f"{name}_mae"] > 0, name
