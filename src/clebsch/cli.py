"""The ``clebsch`` command: train, evaluate, info, md, relax, export, demo.

Examples (shell)::

    clebsch train config.yaml --set model.num_layers=3
    clebsch train --print-default-config > config.yaml
    clebsch train --resume runs/ethanol
    clebsch evaluate runs/ethanol/model.pt test.xyz --output predictions.xyz --plots plots/
    clebsch info runs/ethanol/model.pt
    clebsch md runs/ethanol/model.pt start.xyz --ensemble langevin --temperature 300 --steps 2000
    clebsch relax runs/ethanol/model.pt start.xyz --fmax 0.01 --optimizer fire
    clebsch export runs/ethanol/model.pt ethanol.pt2
    clebsch demo --out demo-run

Data-parallel training runs one process per device under torchrun::

    torchrun --nproc_per_node 2 -m clebsch train config.yaml
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clebsch", description="E(3)-equivariant neural networks for atoms.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model from a YAML config", description="Train a model from a YAML config.")
    p.add_argument("config", nargs="?", help="YAML config (see --print-default-config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set model.num_layers=3 (repeatable)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--print-default-config", action="store_true",
                   help="print a commented config with every default and exit")
    p.add_argument("--model", default="nequip", help="family whose hyperparameters --print-default-config lists")

    p = sub.add_parser("evaluate", help="metrics of a packaged model on a data set",
                       description="Metrics (per config_type) of a packaged model on a structure file.")
    p.add_argument("model", help="packaged model file (model.pt)")
    p.add_argument("data", help="structure file with reference energies / forces")
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--output", metavar="XYZ", help="write the structures with predictions (pred_energy, pred_forces)")
    p.add_argument("--plots", metavar="DIR", help="write parity plots into DIR")
    p.add_argument("--key", dest="keys", action="append", default=[], metavar="TARGET=KEY",
                   help="where a target is stored in the file, e.g. --key energy=REF_energy (repeatable)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", metavar="FILE", help="also write the metrics as JSON")

    p = sub.add_parser("info", help="describe a packaged model", description="Describe a packaged model.")
    p.add_argument("model")

    from .calculators._cli import add_md_arguments, add_relax_arguments

    add_md_arguments(sub.add_parser("md", help="molecular dynamics with a packaged model",
                                    description="Molecular dynamics (NVE, Langevin, NPT) with a packaged model."))
    add_relax_arguments(sub.add_parser("relax", help="relax a structure with a packaged model",
                                       description="Relax positions (and the cell with --cell) with a packaged model."))

    p = sub.add_parser("export", help="export a packaged model to a .pt2 file that runs without clebsch",
                       description="Export a packaged model with torch.export: energy, forces and stress (and the "
                                   "dipole where the model has one) from plain torch. Load it with "
                                   "ClebschCalculator(path) or torch.export.load.")
    p.add_argument("model", help="packaged model file (model.pt)")
    p.add_argument("output", help="exported file to write (.pt2)")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--device", default="cpu")

    p = sub.add_parser("demo", help="train a small NequIP on the bundled ethanol data, evaluate, plot",
                       description="The README's main job: train a small NequIP on examples/ethanol_xtb.xyz "
                                   "for a few minutes, evaluate on held-out frames, print the table, write plots.")
    p.add_argument("--out", default="demo-run", help="run directory (default demo-run)")
    p.add_argument("--time", default="3m", help="training wall-time budget (default 3m)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser


def _train(args) -> int:
    from .train.config import default_config_yaml, load_config
    from .train.trainer import train

    if args.print_default_config:
        sys.stdout.write(default_config_yaml(args.model))
        return 0
    if args.resume:
        if args.config:
            raise SystemExit("clebsch train: give either a config or --resume RUN_DIR, not both")
        train(args.resume, resume=True, overrides=args.overrides)
        return 0
    if not args.config and not args.overrides:
        raise SystemExit("clebsch train: give a config file (see --print-default-config) or --resume RUN_DIR")
    config = load_config(args.config, args.overrides)
    train(config)
    return 0


def _evaluate(args) -> int:
    import json

    import torch

    from .data.dataset import AtomicDataset
    from .data.io import read_structures
    from .train.evaluate import evaluate, write_predictions
    from .train.package import load

    model = load(args.model, device=args.device)
    keys = {"energy": "energy", "forces": "forces", "stress": "stress", "dipole": "dipole"}
    for item in args.keys:
        if "=" not in item:
            raise SystemExit(f"clebsch evaluate: --key expects TARGET=KEY, got {item!r}")
        name, key = item.split("=", 1)
        keys[name] = key or None
    keys = {k: v for k, v in keys.items() if v}
    dtype = model.atomic_energies.dtype
    graphs = AtomicDataset.from_file(args.data, model.cutoff, keys=keys, required=(), dtype=dtype).graphs
    ev = evaluate(model, graphs, args.batch_size, keep=bool(args.plots), keep_outputs=bool(args.output),
                  device=torch.device(args.device))
    print(ev.table(f"{args.data}: {len(graphs)} structures, model {args.model}"))
    if args.json:
        Path(args.json).write_text(json.dumps(ev.metrics, indent=2))
    if args.output:
        write_predictions(args.output, read_structures(args.data), ev.outputs)
        print(f"predictions written to {args.output}")
    if args.plots:
        from .train.plots import parity_plots

        for path in parity_plots(ev, args.plots):
            print(f"wrote {path}")
    return 0


def _info(args) -> int:
    from .train.package import describe

    print(describe(args.model))
    return 0


def _export(args) -> int:
    from .calculators import export

    output = Path(args.output)
    if output.suffix != ".pt2":
        raise ValueError(f"{output}: the exported file must end in .pt2 (the packaged model is the .pt)")
    if output.parent and not output.parent.is_dir():
        raise FileNotFoundError(f"{output}: folder {output.parent} does not exist")
    export(args.model, output, dtype=args.dtype, device=args.device)
    print(f"exported {args.model} -> {output} ({args.dtype}, {args.device}); load it with ClebschCalculator({str(output)!r})")
    return 0


def _demo(args) -> int:
    from .train.demo import run_demo

    run_demo(args.out, time_budget=args.time, threads=args.threads, overrides=args.overrides)
    return 0


def main(argv=None) -> int:
    """Entry point of the ``clebsch`` console script; returns the exit status.

    Errors a user can fix (a bad config key, a missing or malformed file, a
    damaged model) are printed as one line starting with ``clebsch:`` and give
    exit status 2, without a traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 1
    from .train.config import ConfigError
    from .train.package import PackageError

    from .calculators._cli import run_md, run_relax

    handlers = {"train": _train, "evaluate": _evaluate, "info": _info, "md": run_md, "relax": run_relax, "demo": _demo,
                "export": _export}
    try:
        return handlers[args.command](args)
    except (ConfigError, PackageError, FileNotFoundError, ValueError) as err:
        if os.environ.get("CLEBSCH_DEBUG"):
            raise
        print(f"clebsch {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clebsch {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
