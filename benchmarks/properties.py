"""Every model family on QM9-style molecular properties: same data, same split, same wall time, same CPU threads.

The lectures' QM9 comparison on the bundled GFN2-xTB set
(``examples/qm_properties.xyz``, see ``examples/qm_properties.md``): each
registered family (or those given with ``--families``) is trained with its
default hyperparameters through clebsch's own trainer for ``--budget`` of wall
time on one fixed, seeded split (80/10/10 by default), on the per-structure
targets of the file:

- ``energy``, the total xTB energy, compared per atom (meV/atom) after
  per-element reference energies fitted by least squares on the training set;
- ``gap``, the HOMO-LUMO gap (intensive, declared under ``model.targets``), meV;
- ``dipole``, the dipole vector (me·Å per component), made by the dipole head
  from charges times positions plus atomic dipoles where a family has vector
  features; the table also gives the MAE of its length ``|mu|``.

There are no forces in the data, so the loss has no forces term and no model
computes them. Each loss weight is one over the variance of its target on the
training set (energy per atom after the reference fit), so that every term
starts near one. Printed per family: its kind (topological: bonds only;
invariant: coordinates through distances and angles; equivariant: vector or
tensor features), weights, epochs, test MAE per property and milliseconds per
training step (median over steps, validation excluded). A family that fails to
build or train is reported with its error and skipped.

    OMP_NUM_THREADS=2 python benchmarks/properties.py --budget 10m --out runs/bench-properties
    python benchmarks/properties.py --families schnet,painn,gcn --budget 20s --max-structures 400

Families run one after the other. Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "qm_properties.xyz"
GAP_TARGET = {"level": "structure", "irreps": "0e", "reduce": "mean", "unit": "eV"}
KEYS = {"energy": "energy", "gap": "gap", "dipole": "dipole"}
COLUMNS = (  # key, header, width, decimals (None: text, left-aligned)
    ("family", "family", 24, None), ("kind", "kind", 13, None), ("weights", "weights", 9, 0),
    ("epochs", "epochs", 7, 0),
    ("energy_per_atom_mae", "E meV/atom", 11, 2), ("gap_mae", "gap meV", 9, 1), ("dipole_mae", "mu me·Å", 9, 1),
    ("dipole_norm_mae", "|mu| me·Å", 11, 1), ("ms_per_step", "ms/step", 9, 1),
)


def frame_blocks(path: Path) -> list[str]:
    """The text of every frame of an extended XYZ file, unchanged (so that split files hold the same bytes)."""
    lines = path.read_text().splitlines(keepends=True)
    blocks, i = [], 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        try:
            n = int(lines[i].split()[0])
        except ValueError:
            raise ValueError(f"{path}: line {i + 1} should hold the atom count of frame {len(blocks)}, "
                             f"got {lines[i].strip()[:40]!r}") from None
        if i + 2 + n > len(lines):
            raise ValueError(f"{path}: frame {len(blocks)} is truncated ({n} atoms announced at line {i + 1})")
        blocks.append("".join(lines[i:i + 2 + n]))
        i += 2 + n
    if not blocks:
        raise ValueError(f"{path}: no structures")
    return blocks


def write_split(data: Path, out: Path, valid: float, test: float, seed: int, max_structures: int | None) -> dict:
    """Write ``train.xyz``, ``valid.xyz`` and ``test.xyz`` under ``out`` from one seeded split; returns their paths."""
    from clebsch.data.splits import split_indices

    blocks = frame_blocks(data)
    if max_structures is not None:
        blocks = blocks[:max_structures]
    split = split_indices(len(blocks), valid=valid, test=test, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for part in ("train", "valid", "test"):
        if not split[part]:
            raise ValueError(f"the {part} set of {len(blocks)} structures of {data} is empty; "
                             "use more structures or larger fractions")
        paths[part] = out / f"{part}.xyz"
        tmp = paths[part].with_name(paths[part].name + ".tmp")
        tmp.write_text("".join(blocks[i] for i in split[part]))
        tmp.replace(paths[part])
    (out / "split.json").write_text(json.dumps({"file": str(data), "seed": seed, **split}))
    return paths


def loss_weights(train_path: Path, cutoff: float) -> tuple[dict, float]:
    """One over the training-set variance of each target, and the per-atom energy scale (eV).

    The energy is taken per atom after subtracting per-element references fitted by least
    squares; the scale is the RMS of that residual energy per structure over sqrt(mean atoms).
    """
    from clebsch.data import statistics as st
    from clebsch.data.dataset import AtomicDataset

    graphs = AtomicDataset.from_file(train_path, cutoff, keys=KEYS, required=tuple(KEYS)).graphs
    refs = st.reference_energies_least_squares(graphs)
    residual, per_atom, gap, dipole, n_atoms = [], [], [], [], []
    for g in graphs:
        n = int(g.numbers.shape[0])
        e = float(g.targets["energy"]) - sum(refs[int(z)] for z in g.numbers.tolist())
        residual.append(e)
        per_atom.append(e / n)
        n_atoms.append(n)
        gap.append(float(g.targets["gap"]))
        dipole.extend(g.targets["dipole"].reshape(-1).tolist())
    weights = {"energy": 1.0 / max(np.var(per_atom), 1e-12), "forces": 0.0, "gap": 1.0 / max(np.var(gap), 1e-12),
               "dipole": 1.0 / max(np.var(dipole), 1e-12)}
    scale = float(np.sqrt(np.mean(np.square(residual))) / np.sqrt(np.mean(n_atoms)))
    return {k: float(f"{v:.4g}") for k, v in weights.items()}, float(f"{max(scale, 1e-3):.4g}")


def config_for(family: str, paths: dict, run_dir: Path, args, weights: dict, scale: float):
    from clebsch.train.config import load_config

    base = {
        "run_dir": str(run_dir),
        "seed": args.seed,
        "model": {"name": family, "cutoff": args.cutoff, "scale": scale, "outputs": ["energy", "gap", "dipole"],
                  "targets": {"gap": dict(GAP_TARGET)}},
        "data": {"train": str(paths["train"]), "valid": str(paths["valid"]), "test": str(paths["test"]),
                 "keys": dict(KEYS), "batch_size": args.batch_size, "valid_batch_size": 64},
        "loss": {"weights": dict(weights)},
        "optimizer": {"lr": args.lr},
        "training": {"max_epochs": 1_000_000, "max_time": args.budget, "ema_decay": 0.99, "plots": False,
                     "progress": args.verbose},
    }
    return load_config(None, args.overrides, base=base)


def family_kind(model) -> str:
    """topological (bonds only), invariant (scalar features of the geometry) or equivariant (l > 0 features)."""
    if getattr(model, "topological", False):
        return "topological"
    irreps = getattr(model.representation, "irreps_out", None)
    if irreps is not None and any(ir.l > 0 for _, ir in irreps):
        return "equivariant"
    return "invariant"


def test_errors(model, test_path: Path, cutoff: float, dtype: torch.dtype) -> dict:
    """Test MAEs: energy per atom (meV/atom), gap (meV), dipole components and dipole length (me·Å)."""
    from clebsch.data.dataset import AtomicDataset
    from clebsch.train.evaluate import evaluate

    graphs = AtomicDataset.from_file(test_path, cutoff, keys=KEYS, required=tuple(KEYS), dtype=dtype,
                                     targets={"gap": dict(GAP_TARGET)}).graphs
    ev = evaluate(model, graphs, batch_size=64, keep=True, dtype=dtype)
    e = ev.energy
    dipole = ev.parity["dipole"]
    ref, pred = dipole["ref"].reshape(-1, 3), dipole["pred"].reshape(-1, 3)
    gap = ev.parity["gap"]
    return {
        "energy_per_atom_mae": 1000.0 * float(np.mean(np.abs((e["pred"] - e["ref"]) / e["n_atoms"]))),
        "gap_mae": 1000.0 * float(np.mean(np.abs(gap["pred"] - gap["ref"]))),
        "dipole_mae": 1000.0 * float(np.mean(np.abs(pred - ref))),
        "dipole_norm_mae": 1000.0 * float(np.mean(np.abs(np.linalg.norm(pred, axis=1) - np.linalg.norm(ref, axis=1)))),
        "test_structures": len(graphs),
    }


def free_run_dir(out: Path, family: str) -> Path:
    """``out/family``, or ``out/family-2``, ``-3``, ... when an earlier run is there (nothing is overwritten)."""
    candidate, k = out / family, 1
    while candidate.exists():
        k += 1
        candidate = out / f"{family}-{k}"
    return candidate


def run_family(family: str, paths: dict, out: Path, args, weights: dict, scale: float) -> dict:
    import clebsch
    from clebsch.train.trainer import train

    run_dir = free_run_dir(out, family)
    config = config_for(family, paths, run_dir, args, weights, scale)
    stamps = []
    quiet = (lambda msg: None) if not args.verbose else None
    with contextlib.redirect_stdout(io.StringIO()) if not args.verbose else contextlib.nullcontext():
        # the trainer prints its own test table (also in run_dir/test_metrics.txt)
        result = train(config, on_step=lambda epoch, step: stamps.append((epoch, time.perf_counter())), log=quiet)
    model = clebsch.load(Path(result["model_path"]))
    steps = [b[1] - a[1] for a, b in zip(stamps, stamps[1:]) if a[0] == b[0]]  # within an epoch: no validation
    row = {
        "family": family, "kind": family_kind(model), "weights": sum(p.numel() for p in model.parameters()),
        "epochs": result["epochs"], "steps": len(stamps),
        "ms_per_step": 1000.0 * statistics.median(steps) if steps else math.nan,
        "train_time_s": result.get("time_s"), "run_dir": str(run_dir), "status": "ok",
    }
    row.update(test_errors(model, paths["test"], args.cutoff, getattr(torch, config.dtype)))
    return row


def _cell(row: dict, key: str, decimals) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if decimals is None:
        return str(value)
    return f"{value:.{decimals}f}"


def table(rows: list[dict], title: str) -> str:
    def line(cells):
        return "".join(f"{c:<{w}}" if d is None else f"{c:>{w}}" for c, (_, _, w, d) in zip(cells, COLUMNS))

    lines = [title, line([h for _, h, _, _ in COLUMNS])]
    for row in rows:
        if row["status"] == "ok":
            lines.append(line([_cell(row, k, d) for k, _, _, d in COLUMNS]))
        else:
            lines.append(f"{row['family']:<24}{row['status']}")
    return "\n".join(lines)


def markdown(rows: list[dict], title: str) -> str:
    heads = [h.replace("|", "\\|") for _, h, _, _ in COLUMNS]
    lines = [title, "", "| " + " | ".join(heads) + " |", "|" + "|".join("---" if d is None else "---:"
                                                                       for _, _, _, d in COLUMNS) + "|"]
    for row in rows:
        if row["status"] == "ok":
            cells = [_cell(row, k, d) for k, _, _, d in COLUMNS]
        else:
            cells = [row["family"], row["status"].replace("|", "\\|")] + [""] * (len(heads) - 2)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(rows: list[dict], out: Path, meta: dict, title: str) -> None:
    fields = ["family", "status", "kind", "weights", "epochs", "steps", "ms_per_step", "energy_per_atom_mae", "gap_mae",
              "dipole_mae", "dipole_norm_mae", "test_structures", "train_time_s", "run_dir"]
    tmp = out / "properties.csv.tmp"
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out / "properties.csv")
    for name, text in (("properties.md", markdown(rows, title)),
                       ("properties.json", json.dumps({**meta, "rows": rows}, indent=2, default=str))):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out / name)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="10m", help="training wall time per family (seconds or '10m')")
    parser.add_argument("--families", default=None, help="comma-separated families (default: every registered one)")
    parser.add_argument("--data", default=str(DATA), help="extended XYZ with energy, gap and dipole per structure")
    parser.add_argument("--out", default="runs/bench-properties")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--valid-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0, help="the split's and the weights' seed")
    parser.add_argument("--max-structures", type=int, default=None, help="use the first N structures of the file")
    parser.add_argument("--cutoff", type=float, default=5.0, help="Å")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="config override applied to every family, e.g. --set loss.weights.dipole=10")
    parser.add_argument("--verbose", action="store_true", help="show the trainer's log and epoch lines")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from clebsch.models import families
    from clebsch.train.config import parse_duration

    args.budget = parse_duration(args.budget)
    registered = families()
    names = registered if args.families is None else [f.strip() for f in args.families.split(",") if f.strip()]
    data, out = Path(args.data), Path(args.out)
    if not data.exists():
        parser.error(f"--data {data} does not exist (make it with scripts/make_qm_properties_dataset.py)")
    paths = write_split(data, out / "data", args.valid_fraction, args.test_fraction, args.seed, args.max_structures)
    weights, scale = loss_weights(paths["train"], args.cutoff)
    n = {k: len(frame_blocks(p)) for k, p in paths.items()}
    span = f"{args.budget / 60:.3g} min" if args.budget >= 60 else f"{args.budget:.0f} s"
    print(f"{data.name}: {n['train']} train / {n['valid']} valid / {n['test']} test (seed {args.seed}); "
          f"{span} per family on {args.threads} CPU threads; loss weights {weights}; energy scale {scale} eV",
          flush=True)
    meta = {"data": str(data), "split": n, "budget_s": args.budget, "threads": args.threads, "loss_weights": weights,
            "energy_scale": scale, "cutoff": args.cutoff, "batch_size": args.batch_size, "lr": args.lr,
            "overrides": args.overrides}
    title = (f"QM-style properties ({data.name}, {n['test']} test molecules), {span} per family on "
             f"{args.threads} CPU threads, test MAE")
    rows = []
    for family in names:
        start = time.perf_counter()
        if family not in registered:
            row = {"family": family, "status": f"skipped: not registered (registered: {', '.join(registered)})"}
        else:
            print(f"--- {family}", flush=True)
            try:
                row = run_family(family, paths, out, args, weights, scale)
            except KeyboardInterrupt:
                raise
            except Exception as err:  # report and go on with the next family
                message = " ".join(str(err).split())[:200]
                row = {"family": family, "status": f"failed: {type(err).__name__}: {message}"}
                if args.verbose:
                    traceback.print_exc()
        row["wall_s"] = time.perf_counter() - start
        rows.append(row)
        print(f"{family}: {row['status']} ({row['wall_s']:.0f} s)", flush=True)
        write_outputs(rows, out, meta, title)
    print()
    print(table(rows, title))
    print(f"\nwritten: {out / 'properties.csv'}, {out / 'properties.md'}, {out / 'properties.json'}")
    return rows


if __name__ == "__main__":
    main()
    sys.exit(0)
