"""``clebsch demo``: the README's main job, on files that ship with the repository.

Trains a small NequIP (``examples/ethanol_nequip.yaml``) on the bundled
GFN2-xTB ethanol frames (``examples/ethanol_xtb.xyz``) for a few minutes,
evaluates it on held-out frames, prints the table and writes the plots, then
runs a short Langevin MD of one ethanol frame with the trained model.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from .config import ConfigError, load_config, parse_duration
from .trainer import train

__all__ = ["run_demo", "examples_dir"]


def examples_dir() -> Path:
    """The repository's ``examples/`` folder (the demo needs a source checkout or editable install)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "examples"
        if (candidate / "ethanol_nequip.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        "clebsch demo needs examples/ethanol_nequip.yaml and examples/ethanol_xtb.xyz from the clebsch repository; "
        "run it from a source checkout (pip install -e .)"
    )


def run_demo(out="demo-run", time_budget="3m", threads: int = 2, overrides=(), md_steps: int = 400) -> dict:
    """Train, evaluate and plot; returns what :func:`~clebsch.train.trainer.train` returns."""
    examples = examples_dir()
    out = Path(out)
    if (out / "checkpoints" / "last.pt").exists():
        raise ConfigError(f"{out} already holds a demo run; remove it, pass another --out, "
                          f"or continue it with `clebsch train --resume {out}`")
    torch.set_num_threads(max(int(threads), 1))
    seconds = parse_duration(time_budget)
    config = load_config(
        examples / "ethanol_nequip.yaml",
        [f"run_dir={out}", f"data.train={examples / 'ethanol_xtb.xyz'}", f"training.max_time={seconds}", *overrides],
    )
    print(f"clebsch demo: training a small NequIP on {examples / 'ethanol_xtb.xyz'} for {seconds:.0f} s "
          f"on {torch.get_num_threads()} CPU threads; writing to {out}/", file=sys.stderr, flush=True)
    start = time.monotonic()
    result = train(config)
    if md_steps > 0:
        import ase.io

        from ..calculators import md

        print(f"\nclebsch demo: {md_steps} steps of Langevin MD at 300 K (0.5 fs) with the trained model",
              file=sys.stderr, flush=True)
        atoms = ase.io.read(examples / "ethanol_xtb.xyz", index=0)
        md(result["model_path"], atoms, ensemble="langevin", temperature_K=300.0, timestep_fs=0.5,
           steps=md_steps, trajectory=out / "md.traj", logfile=out / "md.log", interval=20)
        result["trajectory"] = out / "md.traj"
    print(f"\nclebsch demo: done in {time.monotonic() - start:.0f} s.")
    print(f"  model      {result.get('model_path')}   (clebsch info {result.get('model_path')})")
    for plot in result.get("plots", []):
        print(f"  plot       {plot}")
    print(f"  metrics    {out / 'metrics.csv'}")
    if "trajectory" in result:
        print(f"  md         {result['trajectory']}  (log {out / 'md.log'})")
    return result
