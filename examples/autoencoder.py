"""An equivariant autoencoder on the conformers of one molecule: held-out reconstruction and a 2D map.

Trains :class:`clebsch.studies.autoencoder.EquivariantAutoencoder` on frames of
``examples/ethanol_xtb.xyz`` (ethanol, GFN2-xTB molecular dynamics at 500 K),
reports the reconstruction RMSD (Å) of the held-out frames, and draws the
PCA of the invariant latent of every frame, coloured by its energy.

    python examples/autoencoder.py --out autoencoder-run --dihedral 0 1 2 3

With ``--data examples/molecules_pyscf.xyz --config-type CH3CH2OH`` it takes
the 18 conformers of one molecule of that file instead (few: a smoke test).
Writes ``summary.json``, ``history.json``, ``model.pt`` and ``embedding.png``
under ``--out``. About three minutes on one core with the defaults.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from ase.io import read

from clebsch.graph import AtomicGraph, batch
from clebsch.studies.autoencoder import (
    EquivariantAutoencoder,
    embed,
    reconstruction_loss,
    reconstruction_rmsd,
    train_autoencoder,
)

HERE = Path(__file__).resolve().parent


@torch.no_grad()
def mean_latent_rmsd(model, graphs, mean_latent):
    """RMSD when every frame is decoded from the training mean of the latent: one shape, in the predicted frame."""
    g = batch(graphs)
    enc = model.encode(g)
    canonical = model.decode(mean_latent[: model.latent_dim].expand(g.num_graphs, -1),
                             mean_latent[model.latent_dim:].expand(g.num_graphs, -1))
    recon = model.centroids(g)[:, None] + canonical @ enc.rotation.transpose(-1, -2)
    return reconstruction_loss(model, g, recon)[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HERE / "ethanol_xtb.xyz"), help="extended XYZ of conformers")
    parser.add_argument("--config-type", default=None, help="keep only frames with this config_type")
    parser.add_argument("--out", default="autoencoder-run", help="output directory")
    parser.add_argument("--train", type=float, default=0.8, help="fraction of the frames used for training")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--latent", type=int, default=16, help="invariant latent size")
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--lmax", type=int, default=1)
    parser.add_argument("--cutoff", type=float, default=5.0, help="neighbour radius, Å")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dihedral", type=int, nargs=4, default=None, metavar=("I", "J", "K", "L"),
                        help="also report how the first principal component follows this dihedral angle "
                             "(atom indices of the file; for ethanol_xtb.xyz, 0 1 2 3 is C-C-O-H)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    frames = read(args.data, ":")
    if args.config_type is not None:
        frames = [a for a in frames if a.info.get("config_type") == args.config_type]
        if not frames:
            raise SystemExit(f"{args.data}: no frame has config_type={args.config_type!r}")
    composition = sorted(frames[0].numbers.tolist())
    for k, atoms in enumerate(frames):
        if sorted(atoms.numbers.tolist()) != composition:
            raise SystemExit(f"{args.data}: frame {k} has formula {atoms.get_chemical_formula()}, frame 0 "
                             f"{frames[0].get_chemical_formula()}; one model handles one composition "
                             "(select one molecule with --config-type)")
    energies = np.array([a.get_potential_energy() if a.calc is not None else a.info.get("energy", np.nan)
                         for a in frames])
    graphs = [AtomicGraph.from_ase(a, cutoff=args.cutoff, where=f"{args.data}, frame {k}")
              for k, a in enumerate(frames)]
    order = np.random.default_rng(args.seed).permutation(len(graphs))
    n_train = int(round(args.train * len(graphs)))
    train_idx, test_idx = order[:n_train], order[n_train:]
    train, test = [graphs[i] for i in train_idx], [graphs[i] for i in test_idx]
    print(f"{args.data}: {len(frames)} frames of {frames[0].get_chemical_formula()}; "
          f"{len(train)} for training, {len(test)} held out")

    model = EquivariantAutoencoder(composition, latent_dim=args.latent, channels=args.channels, lmax=args.lmax,
                                   cutoff=args.cutoff)
    start = time.time()
    history = train_autoencoder(model, train, test, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                seed=args.seed,
                                log=lambda line: print(line, f"({time.time() - start:.0f} s)", flush=True))
    seconds = time.time() - start

    model.eval()
    rmsd_test = reconstruction_rmsd(model, test)
    rmsd_train = reconstruction_rmsd(model, train)
    z = embed(model, graphs)
    mean_latent = z[torch.as_tensor(train_idx)].mean(0)
    rigid = mean_latent_rmsd(model, test, mean_latent)
    summary = {
        "data": str(args.data), "frames": len(frames), "train": len(train), "test": len(test),
        "epochs": args.epochs, "seconds": seconds,
        "test_rmsd_mean": float(rmsd_test.mean()), "test_rmsd_median": float(rmsd_test.median()),
        "test_rmsd_max": float(rmsd_test.max()), "train_rmsd_mean": float(rmsd_train.mean()),
        "test_rmsd_mean_latent": float(rigid.mean()),
    }
    print(f"\nheld-out reconstruction RMSD: mean {summary['test_rmsd_mean']:.3f} Å, median "
          f"{summary['test_rmsd_median']:.3f} Å, max {summary['test_rmsd_max']:.3f} Å "
          f"(training frames: {summary['train_rmsd_mean']:.3f} Å)")
    print(f"decoded from the mean latent instead (one shape in the predicted frame): {float(rigid.mean()):.3f} Å")

    # 2D map: PCA of the invariant latent (the chirality columns, odd under reflections, are left out)
    latent = z[:, : model.latent_dim].double().numpy()
    centred = latent - latent[train_idx].mean(0)
    _, s, vt = np.linalg.svd(centred[train_idx], full_matrices=False)
    pcs = centred @ vt[:2].T
    explained = (s[:2] ** 2 / (s**2).sum()).tolist()
    summary["pca_explained_variance"] = explained
    if np.isfinite(energies).all():
        # how much of the energy a linear map of the latent explains, on the held-out frames
        X = np.hstack([latent, np.ones((len(latent), 1))])
        coef, *_ = np.linalg.lstsq(X[train_idx], energies[train_idx], rcond=None)
        resid = energies[test_idx] - X[test_idx] @ coef
        r2 = 1 - resid.var() / energies[test_idx].var()
        summary["energy_from_latent_r2_test"] = float(r2)
        print(f"energy from a linear map of the latent: held-out R² {r2:.3f}")
    if args.dihedral is not None:
        angle = np.array([abs(a.get_dihedral(*args.dihedral)) for a in frames])
        angle = np.minimum(angle, 360 - angle)  # |dihedral| in [0, 180]: mirror images have opposite signs
        corr = float(np.corrcoef(pcs[:, 0], angle)[0, 1])
        summary["pc1_dihedral_correlation"] = corr
        print(f"correlation of PC 1 with the |dihedral| {'-'.join(map(str, args.dihedral))}: {corr:+.3f}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "history.json").write_text(json.dumps(history, indent=2))
    torch.save({"state_dict": model.state_dict(), "numbers": composition, "args": vars(args)}, out / "model.pt")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    colour = energies - np.nanmin(energies) if np.isfinite(energies).all() else np.zeros(len(energies))
    for idx, marker, label in ((train_idx, "o", "training"), (test_idx, "^", "held out")):
        sc = ax.scatter(pcs[idx, 0], pcs[idx, 1], c=colour[idx], marker=marker, s=14, cmap="viridis",
                        vmin=colour.min(), vmax=colour.max(), label=label)
    fig.colorbar(sc, ax=ax, label="energy - min (eV)")
    ax.set_xlabel(f"PC 1 of the latent ({explained[0]:.0%})")
    ax.set_ylabel(f"PC 2 ({explained[1]:.0%})")
    ax.set_title(f"{frames[0].get_chemical_formula()}: invariant latent, {len(frames)} frames")
    ax.legend(loc="best", fontsize=8)
    ax2.plot(history["epoch"], history["train_rmsd"], label="training")
    ax2.plot(history["epoch"], history["validation_rmsd"], label="held out")
    ax2.axhline(float(rigid.mean()), color="k", ls="--", lw=1, label="held out, mean latent")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("reconstruction RMSD (Å)")
    ax2.set_yscale("log")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "embedding.png", dpi=120)
    print(f"wrote {out / 'embedding.png'}, {out / 'summary.json'}, {out / 'history.json'}, {out / 'model.pt'}")


if __name__ == "__main__":
    main()
