"""Every model family on rMD17 ethanol, same data, same wall-time budget, same CPU threads.

The lectures' comparison table on our data and budget: each registered family
(or those given with ``--families``) is trained with its default
hyperparameters on ``train.xyz`` (950 train / 50 validation, seeded split)
for ``--budget`` of wall time, then tested on ``test_MD.xyz``. Printed per
family: energy and force MAE, weights, epochs reached and milliseconds per
training step (batch of 5; wall time over steps, validation included).

    OMP_NUM_THREADS=2 python benchmarks/families.py --budget 30m --out runs/bench-families

Families run one after the other (a budget of 30 minutes and thirteen families
is six and a half hours). Rerunning the same command keeps the families
already in the results file (``--results``, default ``OUT/families.json``;
measured with the same budget, threads and ``--set``) and trains the rest, so a
long table can be run in parts, across sessions and machines: each row records
when, on which CPU (and its fp32 matrix-multiply rate just before training),
with which torch and at which commit it was measured. ``--fresh`` measures the
families given again (the other rows stay). The README's 30-minute table is
kept in the repository:

    OMP_NUM_THREADS=2 python benchmarks/families.py --budget 30m --out runs/families-30m \
        --results benchmarks/results/families_30m_2threads.json --families mace,visnet

The README's 10-minute table ran two single-threaded halves side by side, one per core:

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/families.py --budget 10m --threads 1 \
        --families schnet,dimenet,painn,visnet,nequip,mace,allegro --out runs/families-a &
    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/families.py --budget 10m --threads 1 \
        --families egnn,equivariant_transformer,tensornet,segnn,equiformer,cartesian --out runs/families-b

Each family trains with its own defaults (``clebsch.models.training_defaults``:
DimeNet++ at lr 0.001, MACE at 0.02) and the same loss, schedule and EMA. Not a test.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from clebsch.models import families
from clebsch.train.config import load_config, parse_duration
from clebsch.train.trainer import train

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ethanol"


def config_for(family: str, data: Path, test: Path, out: Path, budget: float, overrides) -> object:
    base = {
        "run_dir": str(out / family),
        "seed": 0,
        "model": {"name": family, "cutoff": 5.0},
        "data": {"train": str(data / "train.xyz"), "valid_fraction": 0.05, "test": str(test),
                 "keys": {"energy": "energy", "forces": "forces"}, "batch_size": 5, "valid_batch_size": 50},
        "loss": {"weights": {"energy": 1.0, "forces": 100.0}},
        "second_stage": {"enabled": True, "start_fraction": 0.8, "weights": {"energy": 1000.0, "forces": 100.0},
                         "lr": 0.001},
        "training": {"max_epochs": 100000, "max_time": budget, "ema_decay": 0.99, "plots": False},
    }
    if (data / "isolated_atoms.xyz").exists():  # else the atoms' energies are fitted to the training set
        base["data"]["isolated_atoms"] = str(data / "isolated_atoms.xyz")
    return load_config(None, overrides, base=base)


KINDS = {"schnet": "invariant", "dimenet": "invariant", "egnn": "scalar + vector", "painn": "scalar + vector",
         "equivariant_transformer": "scalar + vector", "visnet": "scalar + vector", "tensornet": "Cartesian rank 2",
         "nequip": "spherical, l ≤ 2", "segnn": "spherical, l ≤ 2", "mace": "spherical, l ≤ 2",
         "equiformer": "spherical, attention", "allegro": "spherical, strictly local",
         "cartesian": "raw Cartesian, not equivariant"}


def markdown(table: dict) -> str:
    """The README's table from a results file."""
    lines = ["| family | kind | weights | epochs | energy MAE, meV | force MAE, meV/Å | ms/step | measured | "
             "machine: fp32 matmul GFLOP/s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    order = list(KINDS)  # the families' order in the registry, as in the 10-minute table
    rows = sorted(table["rows"], key=lambda r: order.index(r["family"]) if r["family"] in order else len(order))
    for r in rows:
        lines.append(f"| {r['family']} | {KINDS.get(r['family'], '')} | {r['weights']:,} | {r['epochs']:,} | "
                     f"{r['energy_mae']:.1f} | {r['forces_mae']:.1f} | {r['ms_per_step']:.0f} | "
                     f"{r.get('measured', '')[:10]} | {r.get('matmul_gflops', '')} |")
    return "\n".join(lines)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _matmul_gflops(threads: int, seconds: float = 2.0) -> float:
    """This machine's fp32 matrix-multiply rate now, on the benchmark's threads: rows measured on other
    machines or days can be compared by it."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return 2 * 1024**3 * n / (time.perf_counter() - start) / 1e9


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "../src"],
                               capture_output=True, text=True, timeout=10, cwd=Path(__file__).resolve().parent)
        return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "") if head.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="30m", help="training wall time per family (seconds or '30m')")
    parser.add_argument("--families", default=",".join(families(kind="geometric")), help="comma-separated families")
    parser.add_argument("--data", default=str(DATA),
                        help="folder with train.xyz, test_MD.xyz and (optional; else fitted) isolated_atoms.xyz")
    parser.add_argument("--out", default="runs/bench-families")
    parser.add_argument("--results", default=None,
                        help="the table's JSON file, kept between runs (default: OUT/families.json)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-test", type=int, default=None, help="test on the first N frames of test_MD.xyz")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="applied to every family")
    parser.add_argument("--markdown", action="store_true",
                        help="print the results file as a Markdown table and train nothing")
    parser.add_argument("--fresh", action="store_true",
                        help="retrain the families given, replacing their rows (default: keep those already in the "
                             "results file); a file measured with other settings is started over")
    args = parser.parse_args(argv)
    if args.markdown:
        results = Path(args.results) if args.results else Path(args.out) / "families.json"
        if not results.exists():
            parser.error(f"--markdown: {results} does not exist")
        print(markdown(json.loads(results.read_text())))
        return
    torch.set_num_threads(args.threads)
    data, out = Path(args.data), Path(args.out)
    budget = parse_duration(args.budget)
    names = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = sorted(set(names) - set(families()))
    if unknown:
        parser.error(f"unknown families {unknown}; registered: {families()}")
    test = data / "test_MD.xyz"
    missing = [str(f) for f in (data / "train.xyz", test) if not f.is_file()]
    if missing:
        parser.error(f"--data {data}: no {' or '.join(missing)} (the folder needs train.xyz and test_MD.xyz)")
    if args.max_test:
        import ase.io

        test = out / "test-subset.xyz"
        out.mkdir(parents=True, exist_ok=True)
        ase.io.write(test, ase.io.read(data / "test_MD.xyz", f":{args.max_test}"))
    rows, others = [], []
    done = Path(args.results) if args.results else out / "families.json"
    if done.exists():  # resume a table: keep the families already measured the same way
        kept = json.loads(done.read_text())
        same = (kept.get("budget_s") == budget and kept.get("threads") == args.threads
                and kept.get("overrides", []) == args.overrides and kept.get("max_test") == args.max_test)
        if not same and not args.fresh:
            parser.error(f"{done} holds a table measured with other settings (budget {kept.get('budget_s')} s, "
                         f"{kept.get('threads')} threads, --set {kept.get('overrides', [])}, "
                         f"--max-test {kept.get('max_test')}); "
                         "give another --out or --fresh to start over")
        if same:  # --fresh retrains the families asked for; the other families' rows stay in the file
            rows = [] if args.fresh else [r for r in kept["rows"] if r["family"] in names]
            others = [r for r in kept["rows"] if r["family"] not in names]  # kept in the file, not printed
        if rows:
            print(f"kept from {done}: {', '.join(r['family'] for r in rows)}")
    for family in names:
        if any(r["family"] == family for r in rows):
            continue
        run = out / family
        if run.exists():  # an interrupted run of this family: put it aside, train from scratch
            run.rename(run.with_name(f"{family}.interrupted-{int(time.time())}"))
        config = config_for(family, data, test, out, budget, args.overrides)
        gflops, commit = _matmul_gflops(args.threads), _commit()  # the code as it is when training starts
        result = train(config)
        import clebsch

        model = clebsch.load(Path(result["model_path"]))
        with open(Path(result["run_dir"]) / "metrics.csv") as fh:
            epochs = list(csv.DictReader(fh))
        n_train = len(json.loads((Path(result["run_dir"]) / "split.json").read_text())["train"])
        steps = result["epochs"] * -(-n_train // config.data.batch_size)
        metrics = result["test_metrics"]["all"]
        rows.append({"family": family, "energy_mae": metrics["energy_mae"], "forces_mae": metrics["forces_mae"],
                     "weights": sum(p.numel() for p in model.parameters()), "epochs": result["epochs"],
                     "ms_per_step": 1000 * float(epochs[-1]["time_s"]) / max(steps, 1),
                     "measured": datetime.datetime.now().isoformat(timespec="minutes"), "cpu": _cpu(),
                     "torch": torch.__version__, "commit": commit, "matmul_gflops": round(gflops, 1)})
        rows.sort(key=lambda r: names.index(r["family"]))
        done.parent.mkdir(parents=True, exist_ok=True)
        table = {"budget_s": budget, "threads": args.threads, "overrides": args.overrides, "max_test": args.max_test,
                 "rows": others + rows}
        tmp = done.with_name(done.name + ".tmp")
        tmp.write_text(json.dumps(table, indent=2))
        tmp.replace(done)
    print()
    span = f"{budget / 60:.0f} min" if budget >= 60 else f"{budget:.0f} s"
    print(f"rMD17 ethanol, {span} per family on {args.threads} CPU threads, test on {test.name}")
    print(f"{'family':<24}{'E MAE meV':>10}{'F MAE meV/Å':>13}{'weights':>10}{'epochs':>8}{'ms/step':>9}")
    for r in rows:
        print(f"{r['family']:<24}{r['energy_mae']:>10.2f}{r['forces_mae']:>13.2f}{r['weights']:>10}"
              f"{r['epochs']:>8}{r['ms_per_step']:>9.1f}")


if __name__ == "__main__":
    main()
