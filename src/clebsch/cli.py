"""The ``clebsch`` command: train, evaluate, info, md, relax, export, demo.

Examples (shell)::

    clebsch train config.yaml --set model.num_layers=3
    clebsch train --print-default-config > config.yaml
    clebsch train --resume runs/ethanol
    clebsch train finetune.yaml --init-from runs/ethanol/model.pt
    clebsch evaluate runs/ethanol/model.pt test.xyz --output predictions.xyz --plots plots/
    clebsch info runs/ethanol/model.pt
    clebsch md runs/ethanol/model.pt start.xyz --ensemble langevin --temperature 300 --steps 2000
    clebsch relax runs/ethanol/model.pt start.xyz --fmax 0.01 --optimizer fire
    clebsch export runs/ethanol/model.pt ethanol.pt2
    clebsch demo --out demo-run

Data-parallel training runs one process per device under torchrun::

    torchrun --nproc_per_node 2 -m clebsch train config.yaml

Every command ends in one line that says what was wrong (``clebsch md: error:
...``) and a non-zero exit status: 2 for a mistake in the input, 1 for an
internal error, 130 when interrupted with Ctrl-C. ``--debug`` (or the
environment variable ``CLEBSCH_DEBUG=1``) shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]


_DEBUG_HELP = "show the full traceback of an error (also: environment variable CLEBSCH_DEBUG=1)"


class _SubParser(argparse.ArgumentParser):
    """A sub-command's parser: each one takes ``--debug`` too (after the command name)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)


def build_parser() -> argparse.ArgumentParser:
    from .calculators._cli import positive_int

    parser = argparse.ArgumentParser(prog="clebsch", description="E(3)-equivariant neural networks for atoms.")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_SubParser)

    p = sub.add_parser("train", help="train a model from a YAML config", description="Train a model from a YAML config.")
    p.add_argument("config", nargs="?", help="YAML config (see --print-default-config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set model.num_layers=3 (repeatable)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--init-from", metavar="MODEL", dest="init_from",
                   help="fine-tune: start from the weights of this packaged model (same family and cutoff); "
                        "overrides finetune.init_from")
    p.add_argument("--print-default-config", action="store_true",
                   help="print a commented config with every default and exit")
    p.add_argument("--model", default="nequip", help="family whose hyperparameters --print-default-config lists")

    p = sub.add_parser("evaluate", help="metrics of a packaged model on a data set",
                       description="Metrics (per config_type) of a packaged model on a structure file.")
    p.add_argument("model", help="packaged model file (model.pt), or a committee file (committee.json: the "
                                 "members' mean prediction is evaluated)")
    p.add_argument("data", help="structure file with reference energies / forces")
    p.add_argument("--batch-size", type=positive_int, default=10, help="structures per batch (default 10)")
    p.add_argument("--output", metavar="XYZ", help="write the structures with predictions (pred_energy, pred_forces)")
    p.add_argument("--plots", metavar="DIR", help="write parity plots into DIR")
    p.add_argument("--key", dest="keys", action="append", default=[], metavar="TARGET=KEY",
                   help="where a target is stored in the file, e.g. --key energy=REF_energy (repeatable)")
    p.add_argument("--unit", dest="units", action="append", default=[], metavar="TARGET=UNIT",
                   help="the file's unit of a target (or positions), e.g. --unit energy=kcal/mol (repeatable); "
                        "default: the data.units the model was trained with")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", metavar="FILE", help="also write the metrics as JSON")
    p.add_argument("--skip-nonfinite", action="store_true",
                   help="treat NaN / infinite reference values as missing instead of an error")
    p.add_argument("--head", help="energy head of a multi-head (fine-tuned) model; default: its own")

    from .studies.learning_curve import add_arguments as add_learning_curve_arguments

    add_learning_curve_arguments(sub.add_parser(
        "learning-curve", help="test error against training-set size, with a fitted power law",
        description="Train configs at several training-set sizes on nested seeded subsets (fixed validation and "
                    "test sets), fit error = A N^(-beta), write a CSV and a log-log plot."))

    p = sub.add_parser("density", help="a predicted electron density as a Gaussian cube file",
                       description="Write the electron density a model predicts for a structure (a per-atom "
                                   "target in an auxiliary basis) as a Gaussian cube file, and with --reference "
                                   "the error against the file's own coefficients.")
    p.add_argument("model", help="packaged model file (model.pt) with a density target")
    p.add_argument("structure", help="structure file (any ASE-readable format)")
    p.add_argument("--cube", required=True, metavar="FILE", help="cube file to write (electrons / Bohr^3)")
    p.add_argument("--frame", type=int, default=0, help="frame of the structure file (default 0)")
    p.add_argument("--target", help="which density target (default: the model's only one)")
    p.add_argument("--reference", metavar="KEY",
                   help="per-atom key of reference coefficients in the file: report eps_rho and write the "
                        "error (predicted - reference) to FILE with '-error' before the suffix")
    p.add_argument("--spacing", type=float, default=0.2, help="grid spacing in Å (default 0.2)")
    p.add_argument("--margin", type=float, default=3.0, help="box margin around the atoms in Å (default 3)")

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
    p.add_argument("output", help="exported file to write (.pt2; with --lammps the OUT of OUT.pkl and OUT.lmp)")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--device", default="cpu")
    p.add_argument("--lammps", action="store_true",
                   help="write OUT.pkl for LAMMPS's 'pair_style mliap unified' and OUT.lmp, the commands that use "
                        "it (include after the box and 'neighbor')")
    p.add_argument("--elements", nargs="+", default=None,
                   help="with --lammps: element names of LAMMPS's atom types, in order (default: the model's)")

    p = sub.add_parser("demo", help="train a small NequIP on the bundled ethanol data, evaluate, plot",
                       description="The README's main job: train a small NequIP on examples/ethanol_xtb.xyz "
                                   "for a few minutes, evaluate on held-out frames, print the table, write plots.")
    p.add_argument("--out", default="demo-run", help="run directory (default demo-run)")
    p.add_argument("--time", default="3m", help="training wall-time budget (default 3m)")
    p.add_argument("--threads", type=positive_int, default=2, help="CPU threads (default 2)")
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
            raise ValueError("give either a config or --resume RUN_DIR, not both")
        if args.init_from:
            raise ValueError("--init-from starts a new run from a packaged model; --resume RUN_DIR continues a run, "
                             "which already has its starting point: give one of them")
        train(args.resume, resume=True, overrides=args.overrides)
        return 0
    if not args.config and not args.overrides:
        raise ValueError("give a config file (see --print-default-config) or --resume RUN_DIR")
    overrides = list(args.overrides)
    if args.init_from:
        import json

        overrides.append(f"finetune.init_from={json.dumps(str(args.init_from))}")  # a JSON string is YAML
    config = load_config(args.config, overrides)
    train(config)
    return 0


def _check_device(device) -> None:
    """A clear error for a device this machine does not have (torch would fail deep inside with an assertion)."""
    from .calculators._calculator import _as_device

    _as_device(device)


def _evaluate(args) -> int:
    import json

    import torch

    from ._atomic import atomic_write_text, check_output_path
    from .data.dataset import AtomicDataset
    from .data.io import check_elements, read_structures
    from .models.package import load
    from .data.units import unit_factors
    from .train.evaluate import evaluate, evaluate_keys, evaluate_units, write_predictions

    # every input is checked before any output is opened
    _check_device(args.device)
    overrides = {}
    for item in args.keys:
        if "=" not in item:
            raise ValueError(f"--key expects TARGET=KEY, got {item!r}")
        name, key = item.split("=", 1)
        overrides[name] = key or None
    unit_overrides = {}
    for item in args.units:
        if "=" not in item:
            raise ValueError(f"--unit expects TARGET=UNIT, got {item!r}")
        name, unit = item.split("=", 1)
        unit_overrides[name] = unit
    inputs = {"model file": args.model, "data file": args.data}
    outputs = {"--output": args.output, "--json": args.json}
    for flag, path in outputs.items():
        if path:
            others = {o: p for o, p in outputs.items() if o != flag and p}
            check_output_path(path, f"{flag} file", inputs=inputs, others=others)
    if args.plots:
        plots = Path(args.plots)
        if plots.exists() and not plots.is_dir():
            raise NotADirectoryError(f"--plots {str(plots)!r} is a file, not a folder")
        existing = next((p for p in [plots, *plots.parents] if p.exists()), Path("."))
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(f"cannot write plots into {str(plots)!r}: folder {str(existing)!r} is not writable")
    from .uncertainty import is_committee_file, load_model

    if is_committee_file(args.model):  # the committee's mean prediction
        if args.head:
            raise ValueError(f"--head chooses an energy head of one model; {args.model} is a committee file")
        model = load_model(args.model, device=args.device)
        print(f"clebsch evaluate: the mean of the {len(model.members)} models of committee {args.model}")
    else:
        model = load(args.model, device=args.device, head=args.head)
    unknown = sorted(set(overrides) - set(model.targets) - {"weight"})
    if unknown:
        raise ValueError(f"--key names unknown target(s) {unknown}; this model predicts {list(model.outputs)}")
    keys = evaluate_keys(model, overrides)  # every target the model predicts, under its own name unless mapped
    units = evaluate_units(model, unit_overrides)
    try:
        unit_factors(units, model.targets)
    except ValueError as err:
        raise ValueError(f"--unit: {err}".replace("data.units.", "")) from None
    dtype = model.atomic_energies.dtype
    graphs = AtomicDataset.from_file(args.data, model.cutoff, keys=keys, required=(), dtype=dtype,
                                     targets=model.config.get("targets"),
                                     allow_nonfinite=args.skip_nonfinite, units=units or None).graphs
    check_elements(graphs, model.species, args.data)
    for line in _reference_coverage(graphs, keys, args.data):
        print(f"clebsch evaluate: note: {line}", file=sys.stderr)
    from .train.electronic import basis_targets, electronic_report, format_electronic

    electronic = any(basis_targets({n: model.targets[n] for n in model.outputs}))
    frames = read_structures(args.data) if args.output or electronic else None
    ev = evaluate(model, graphs, args.batch_size, keep=bool(args.plots), keep_outputs=bool(args.output or electronic),
                  device=torch.device(args.device))
    print(ev.table(f"{args.data}: {len(graphs)} structures, model {args.model}"))
    metrics = ev.metrics
    if electronic:  # densities and matrices judged by what they stand for
        report = electronic_report(model, graphs, ev.outputs, frames, keys, units)
        print()
        print(format_electronic(report, model.targets))
        metrics = {"metrics": ev.metrics, "electronic": report}
    if args.json:
        atomic_write_text(json.dumps(metrics, indent=2), args.json)
    if args.output:
        write_predictions(args.output, frames, ev.outputs, targets=model.targets, units=units)
        print(f"predictions written to {args.output}")
    if args.plots:
        from .train.plots import parity_plots

        for path in parity_plots(ev, args.plots):
            print(f"wrote {path}")
    from .train.metrics import nonfinite_counts

    bad = nonfinite_counts(ev.metrics)
    if bad:
        print(f"clebsch evaluate: the model predicted NaN or infinite values ({', '.join(f'{k}: {v}' for k, v in bad.items())}"
              f"); its metrics cover the finite predictions only", file=sys.stderr)
        return 1
    return 0


def _reference_coverage(graphs, keys: dict, path) -> list[str]:
    """One line per target whose reference is missing from some or all structures of ``path``.

    A target with no reference anywhere is left out of the table; one missing from a few frames is judged on the
    others. Either way the user is told which key was looked for, so that a misnamed key is not silent.
    """
    from .data.io import read_structure
    from .data.targets import available_keys

    lines = []
    for name, key in keys.items():
        if name == "weight":
            continue
        missing = [i for i, g in enumerate(graphs) if name not in g.targets]
        if not missing:
            continue
        if len(missing) == len(graphs):
            have = "; ".join(f"{p}: {v}" for p, v in available_keys(read_structure(path, 0)).items())
            lines.append(f"no reference for {name} (key {key!r}) in any of the {len(graphs)} structures of "
                         f"{str(path)!r}, so it is not in the table; keys in frame 0 are {have}; name the key with "
                         f"--key {name}=KEY")
        else:
            shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
            lines.append(f"{name} (key {key!r}) has no reference in {len(missing)} of the {len(graphs)} structures "
                         f"of {str(path)!r} (frames {shown}); its metrics cover the other {len(graphs) - len(missing)}")
    return lines


def _density(args) -> int:
    import torch

    from ._atomic import check_output_path
    from .basis import density_report, write_density_cube
    from .data.io import check_elements, read_structure
    from .data.targets import graph_from_atoms
    from .models.package import load
    from .train.electronic import basis_targets

    if not args.spacing > 0 or not args.margin >= 0:
        raise ValueError(f"--spacing must be positive and --margin not negative, got {args.spacing}, {args.margin}")
    check_output_path(args.cube, "--cube file", inputs={"model file": args.model, "structure file": args.structure})
    model = load(args.model)
    densities, _ = basis_targets({n: model.targets[n] for n in model.outputs})
    if args.target is not None and args.target not in densities:
        raise ValueError(f"--target {args.target!r} is not a density target of this model; it has {densities}")
    if not densities:
        raise ValueError(f"model {args.model} predicts no density (a per-atom target with a basis); its outputs are "
                         f"{list(model.outputs)}")
    if len(densities) > 1 and args.target is None:
        raise ValueError(f"model {args.model} has several density targets {densities}; choose one with --target")
    name = args.target or densities[0]
    atoms = read_structure(args.structure, args.frame)
    check_elements([atoms], model.species, args.structure, args.frame)
    keys = {name: args.reference} if args.reference else {}
    graph = graph_from_atoms(atoms, model.cutoff, keys=keys, required=tuple(keys), targets=model.targets,
                             dtype=model.atomic_energies.dtype, where=f"{args.structure}, frame {args.frame}")
    with torch.enable_grad():
        out = model(graph)
    basis = model.targets[name].basis
    coefficients = out[name].detach().double()
    write_density_cube(args.cube, atoms, basis, coefficients, args.spacing, args.margin)
    report = density_report(basis, atoms.numbers, atoms.positions,
                            coefficients, torch.nan_to_num(graph.targets[name].double()) if args.reference else None)
    print(f"wrote {args.cube}: predicted density, {report['electrons']:.4f} electrons")
    if args.reference:
        cube = Path(args.cube)
        error_path = cube.with_name(cube.stem + "-error" + cube.suffix)
        write_density_cube(error_path, atoms, basis, coefficients - torch.nan_to_num(graph.targets[name].double()),
                           args.spacing, args.margin)
        print(f"wrote {error_path}: predicted - reference; eps_rho = {report['density_error_percent']:.3f} %")
    return 0


def _learning_curve(args) -> int:
    from .studies.learning_curve import main as run

    return run(args)


def _info(args) -> int:
    from .models.package import describe

    print(describe(args.model))
    return 0


def _export(args) -> int:
    from ._atomic import same_file
    from .calculators import export

    output = Path(args.output)
    if getattr(args, "lammps", False):
        from .calculators.lammps import write_lammps

        if output.parent and not output.parent.is_dir():
            raise FileNotFoundError(f"{output}: folder {output.parent} does not exist")
        if same_file(output, args.model) or same_file(output.with_suffix(".pkl"), args.model):
            raise ValueError(f"{output} is the same file as the model file {args.model!r}; choose another name")
        pkl, lmp = write_lammps(args.model, output, elements=args.elements, dtype=args.dtype)
        print(open(lmp).readline().lstrip("# ").rstrip())
        print(f"wrote {pkl} and {lmp}; in LAMMPS (units metal, newton on, after the box and 'neighbor'): include {lmp}")
        return 0
    elif args.elements:
        raise ValueError("--elements goes with --lammps")
    if output.suffix != ".pt2":
        raise ValueError(f"{output}: the exported file must end in .pt2 (the packaged model is the .pt)")
    if output.parent and not output.parent.is_dir():
        raise FileNotFoundError(f"{output}: folder {output.parent} does not exist")
    if same_file(output, args.model):
        raise ValueError(f"{output} is the same file as the model file {args.model!r}; choose another name")
    _check_device(args.device)
    export(args.model, output, dtype=args.dtype, device=args.device)
    print(f"exported {args.model} -> {output} ({args.dtype}, {args.device}); load it with ClebschCalculator({str(output)!r})")
    return 0


def _demo(args) -> int:
    from .train.demo import run_demo

    run_demo(args.out, time_budget=args.time, threads=args.threads, overrides=args.overrides)
    return 0


def _describe_os_error(err: OSError) -> str:
    """One line for an OSError: what failed and on which file, without errno noise."""
    text = str(err)
    if err.filename is not None and err.strerror and text.startswith("["):
        text = f"{err.strerror}: {os.fspath(err.filename)!r}"
        if err.filename2 is not None:
            text += f" -> {os.fspath(err.filename2)!r}"
    if isinstance(err, PermissionError):
        text += " (check the permissions of the file and its folder, or choose another path)"
    return text


def _is_missing_cuda(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, (AssertionError, RuntimeError)) and (
        "not compiled with CUDA" in text or "No CUDA GPUs are available" in text or "no NVIDIA driver" in text
    )


def _debug_requested(args=None) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get("CLEBSCH_DEBUG", "").strip() not in ("", "0")


def main(argv=None) -> int:
    """Entry point of the ``clebsch`` console script; returns the exit status.

    Every failure ends in one line on stderr, starting with ``clebsch COMMAND:``:

    - errors a user can fix (a bad config key, a missing, malformed or
      read-only file, a damaged model, a device this machine lacks) give
      ``error: ...`` and exit status 2;
    - anything else gives ``internal error: ...`` with a hint to rerun with
      ``--debug``, and exit status 1;
    - Ctrl-C gives ``interrupted`` and exit status 130.

    ``--debug`` or ``CLEBSCH_DEBUG=1`` re-raises instead, showing the traceback.
    Invalid arguments are reported by argparse (usage, then the error; status 2).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 1
    from ._memory import keep_freed_memory
    from .models.package import PackageError
    from .train.config import ConfigError

    from .calculators._cli import run_md, run_relax

    keep_freed_memory()  # large steps reuse the memory the last one freed (see clebsch._memory)

    handlers = {"train": _train, "evaluate": _evaluate, "info": _info, "density": _density, "md": run_md,
                "relax": run_relax, "demo": _demo, "export": _export,
                "learning-curve": _learning_curve}
    debug = _debug_requested(args)
    prefix = f"clebsch {args.command}"
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except (ConfigError, PackageError, ValueError, OSError) as err:
        if debug:
            raise
        message = _describe_os_error(err) if isinstance(err, OSError) else str(err)
        print(f"{prefix}: error: {' '.join(message.split())}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if debug:
            raise
        if _is_missing_cuda(err):
            print(f"{prefix}: error: this torch sees no CUDA device ({' '.join(str(err).split())}); use the cpu "
                  f"device (--device cpu, or device: cpu in a training config)", file=sys.stderr)
            return 2
        detail = " ".join(str(err).split()) or "(no message)"
        print(f"{prefix}: internal error: {type(err).__name__}: {detail[:500]} -- run again with --debug "
              f"(or CLEBSCH_DEBUG=1) for the traceback, and please report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
