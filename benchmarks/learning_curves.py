"""Learning curves on the bundled ethanol data: NequIP at lmax 0, 1, 2, SchNet and the non-equivariant baseline.

Trains every config of ``examples/learning_curves/`` at each training-set size,
``--repeats`` times, on nested seeded subsets of ``examples/ethanol_xtb.xyz``
(the same 50 validation and 100 test frames for all), fits
``force MAE = A N^(-beta)`` and writes ``learning_curve.csv``, ``fits.csv`` and
``learning_curve.png`` (the README figure) into ``--out``::

    OMP_NUM_THREADS=1 python benchmarks/learning_curves.py --threads 1 --out runs/learning-curves

Each run trains until its validation loss stops improving (learning rate halved after 5 epochs without
progress, stopped after 20) or 12 minutes pass, so that the curve compares converged models, not
budgets. The full study (5 models x 4 sizes x 3 repeats) takes about five hours on one CPU core (NequIP
l <= 2 at N = 200: 8 to 12 minutes a run); ``--quick`` runs two tiny sizes once for three epochs, to check
that everything works (one CPU-minute; four minutes of wall time on two busy cores). Not a test. A study that is stopped continues where it
stopped when started again with the same arguments.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from clebsch.studies.learning_curve import learning_curve

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "learning_curves"
MODELS = ("nequip_l0", "nequip_l1", "nequip_l2", "schnet", "cartesian")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated configs of examples/learning_curves/ (default {','.join(MODELS)})")
    parser.add_argument("--sizes", default="25,50,100,200", help="training-set sizes (default 25,50,100,200)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--metric", default="forces_mae")
    parser.add_argument("--out", default="runs/learning-curves")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--time", help="wall time of each run (seconds or '5m'; default: the configs' 2m)")
    parser.add_argument("--quick", action="store_true",
                        help="a check that the study runs: sizes 10,20, one repeat, 3 epochs, small models")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if not (CONFIGS / f"{m}.yaml").is_file()]
    if unknown:
        parser.error(f"no config {unknown} in {CONFIGS}; available: {sorted(p.stem for p in CONFIGS.glob('*.yaml'))}")
    overrides = [f"data.train={ROOT / 'examples' / 'ethanol_xtb.xyz'}"]
    sizes, repeats = [int(s) for s in args.sizes.split(",")], args.repeats
    if args.quick:
        sizes, repeats = [10, 20], 1
        overrides += ["training.max_epochs=3", "training.max_time=60", "model.num_layers=1"]
    if args.time:
        overrides.append(f"training.max_time={args.time}")
    overrides += args.overrides
    start = time.monotonic()
    result = learning_curve({name: CONFIGS / f"{name}.yaml" for name in names}, sizes, repeats=repeats,
                            out_dir=args.out, metric=args.metric, overrides=overrides)
    print()
    print(f"learning curves on examples/ethanol_xtb.xyz: test {result.metric} ({result.unit}) = A N^(-β); "
          f"sizes {sizes}, {repeats} repeat(s), {args.threads} CPU threads, {time.monotonic() - start:.0f} s")
    print(f"{'model':<12} {'β':>7} {'± err':>7} {'A':>10}  " + "  ".join(f"{'N=' + str(s):>9}" for s in sizes))
    for label, fit in result.fits.items():
        means = []
        for s in sizes:
            values = [r["value"] for r in result.rows if r["label"] == label and r["size"] == s]
            means.append(sum(values) / len(values))
        err = f"{fit.beta_err:.3f}" if math.isfinite(fit.beta_err) else "n/a"
        print(f"{label:<12} {fit.beta:>7.3f} {err:>7} {fit.prefactor:>10.4g}  "
              + "  ".join(f"{m:>9.1f}" for m in means))
    print(f"runs {result.csv}; fits {result.fits_csv}; plot {result.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
