"""Train the small models the tests load from tests/fixtures (regenerate with this script).

    .venv/bin/python scripts/make_test_models.py

``cu_nequip_trained.pt``: a two-layer NequIP (float64, cutoff 4 Å) trained for
90 s on the bundled Cu EMT frames (examples/cu_emt.xyz); the LAMMPS tests run
NVE with it and check the energy drift.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from clebsch.train import train

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        result = train(None, overrides=[
            f"run_dir={tmp}/cu", "seed=0", "device=cpu", "dtype=float64",
            "model.name=nequip", "model.cutoff=4.0", "model.num_layers=2", "model.channels=8", "model.lmax=1",
            f"data.train={ROOT / 'examples' / 'cu_emt.xyz'}", "data.valid_fraction=0.1", "data.batch_size=5",
            "loss.weights={energy: 1.0, forces: 100.0}", "training.max_epochs=400", "training.max_time=90",
            "training.progress=false", "training.plots=false",
        ])
        out = ROOT / "tests" / "fixtures" / "cu_nequip_trained.pt"
        shutil.copyfile(result["model_path"], out)
        print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
