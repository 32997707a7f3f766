"""Errors of predicted electron densities and Hamiltonians in the quantities users read off them.

Coefficient and block errors (the loss's view) are in the ordinary metrics; here
each structure's prediction is turned into what it stands for and compared:

- a density (per-atom coefficients in a :class:`~clebsch.basis.GaussianBasis`):
  the normalised error ``eps_rho = int |rho - rho_ref| / int rho_ref`` (%) on a
  molecular grid, and the electron count;
- a matrix (on-site and pair blocks of one basis): the error of every element of
  the whole matrix (pairs beyond the cutoff are predicted as zero), the orbital
  energies of ``H C = S C e`` (overlap by quadrature) of the occupied orbitals,
  the HOMO-LUMO gap, and the error of every element of ``X^T H X`` (``X`` the
  functions orthonormalised by ``S`` without the combinations below
  :data:`~clebsch.basis.pyscf.PREDICTED_OVERLAP_CUTOFF`: the matrix as an
  initial guess uses it; what ``loss_metric: orthonormal`` trains).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..basis import (assemble_matrix, canonical_orthogonalisation, density_report, molecular_grid, orbital_energies,
                     overlap_matrix)
from ..basis.pyscf import PREDICTED_OVERLAP_CUTOFF

__all__ = ["basis_targets", "check_electron_counts", "check_whole_matrix_data", "electronic_report",
           "format_electronic"]

_HA_TO_EV = 27.211386245988


def basis_targets(targets: dict) -> tuple[list[str], list[tuple[str, str]]]:
    """Density targets, and (on-site, pair) target pairs that make one matrix."""
    densities = [n for n, t in targets.items() if t.basis is not None and not t.matrix]
    onsite = {n: t for n, t in targets.items() if t.basis is not None and t.matrix and t.level == "atom"}
    pairs = {n: t for n, t in targets.items() if t.basis is not None and t.matrix and t.level == "edge"}
    matrices = []
    for p, tp in pairs.items():
        match = [o for o, to in onsite.items() if to.basis.to_dict() == tp.basis.to_dict()]
        if match:
            matrices.append((match[0], p))
    return densities, matrices


def check_electron_counts(graphs, target, where: str = "the data", frames=None, key: str | None = None,
                          tolerance: float = 0.05) -> None:
    """Check that the reference densities of ``target`` (a density with ``conserve_electrons``) hold their
    structures' electrons (the sum of the atomic numbers less the total charge) to ``tolerance`` electrons plus
    0.1 % (density fitting conserves the count only approximately); a frame that does not (a basis fitted to
    valence electrons, a charge missing from the file, coefficients in another unit) raises, naming it.
    """
    graphs = list(graphs)
    frames = list(range(len(graphs))) if frames is None else [int(f) for f in frames]
    species = tuple(sorted({int(z) for g in graphs for z in g.numbers.tolist()}))
    if not species:
        return
    w = target.basis.charge_integrals(species)
    lookup = torch.as_tensor(species)
    for g, frame in zip(graphs, frames):
        if target.name not in g.targets:
            continue
        ref = torch.nan_to_num(g.targets[target.name].double())
        held = float((ref * w[torch.searchsorted(lookup, g.numbers.cpu())]).sum())
        expected = float(g.numbers.sum()) - float(g.total_charge.reshape(-1)[0])
        if abs(held - expected) > tolerance + 1e-3 * abs(expected):
            raise ValueError(
                f"{where}, frame {frame}, key {key or target.name!r}: the reference density holds {held:.4f} "
                f"electrons, but its atoms' atomic numbers less the total charge ({float(g.total_charge[0]):g}) "
                f"make {expected:g}; conserve_electrons on target {target.name!r} needs all-electron densities and "
                f"each frame's charge (info 'charge'). Set conserve_electrons: false to train without it")


def check_whole_matrix_data(graphs, target, where: str = "the data", frames=None) -> None:
    """Check that ``target``'s whole-matrix loss (``loss_metric: orthonormal`` or ``density_matrix``) can be
    computed on every structure: an open structure (PySCF's molecular overlap) in elements of its basis, and for
    ``density_matrix`` an even number of electrons (the atomic numbers less the total charge). A frame that is
    not raises, naming it."""
    from ase.data import chemical_symbols

    graphs = list(graphs)
    frames = list(range(len(graphs))) if frames is None else [int(f) for f in frames]
    known = set(target.basis.elements)
    for g, frame in zip(graphs, frames):
        if bool(g.pbc.any()):
            raise ValueError(f"{where}, frame {frame}: target {target.name!r} has loss_metric: {target.loss_metric}, "
                             f"which needs each molecule's overlap matrix; this frame is periodic")
        lacking = sorted({chemical_symbols[int(z)] for z in g.numbers.tolist()} - {chemical_symbols[z] for z in known})
        if lacking:
            raise ValueError(f"{where}, frame {frame}: target {target.name!r}: basis {target.basis.name!r} has no "
                             f"functions for {lacking}")
        if target.loss_metric == "density_matrix":
            electrons = float(g.numbers.sum()) - float(g.total_charge.reshape(-1)[0])
            if abs(electrons - round(electrons)) > 1e-6 or round(electrons) % 2:
                raise ValueError(f"{where}, frame {frame}: target {target.name!r} has loss_metric: density_matrix, "
                                 f"which occupies the lowest orbitals in pairs, but the frame has {electrons:g} "
                                 f"electrons (atomic numbers less its charge); use loss_metric: orthonormal")


def _energy_factor(unit: str) -> float:
    return _HA_TO_EV * 1000.0 if unit in ("Ha", "Hartree") else 1000.0 if unit == "eV" else 1.0


def electronic_report(model, graphs, outputs, frames, keys: dict, units: dict | None = None) -> dict:
    """``{config_type: {metric: value}}`` over ``graphs`` (predictions ``outputs``: the per-batch dicts of
    :func:`~clebsch.train.evaluate.evaluate` with ``keep_outputs``; ``frames``: the structures, for the whole
    reference matrices under ``keys[pair target]``, in the files' ``units`` as ``data.units``)."""
    from ..data.units import unit_factors

    targets = model.targets
    file_factor = unit_factors(units, targets)
    densities, matrices = basis_targets({n: targets[n] for n in model.outputs})
    if not densities and not matrices:
        return {}
    rows: dict[str, dict[str, list]] = {}
    k = 0
    for out in outputs:
        atom0 = edge0 = 0
        for _ in range(out["energy"].shape[0]):
            g, atoms = graphs[k], frames[k]
            n, e = g.num_atoms, g.num_edges
            z, pos = g.numbers.tolist(), g.positions.double()
            row = rows.setdefault(g.config_type[0] if isinstance(g.config_type, (list, tuple)) else g.config_type,
                                  {})
            grid = None  # a coarse grid: errors of ~1e-5 relative, far below what is measured here
            for name in densities:
                if name not in g.targets:
                    continue
                basis = targets[name].basis
                grid = grid or molecular_grid(z, pos, 40, 12)
                ref = torch.nan_to_num(g.targets[name].double())
                pred = out[name][atom0:atom0 + n].double()
                r = density_report(basis, z, pos, pred, ref, grid)
                electrons = sum(z) - float(g.total_charge.reshape(-1)[0])
                row.setdefault(f"{name}_eps_percent", []).append(r["density_error_percent"])
                row.setdefault(f"{name}_electrons_error", []).append(abs(r["electrons"] - electrons))
            for onsite, pair in matrices:
                key = keys.get(pair, pair)
                if key not in atoms.info:
                    continue
                basis = targets[pair].basis
                factor = targets[pair].metric_factor
                h_ref = basis.matrix_to_clebsch(z, atoms.info[key]) * file_factor.get(pair, 1.0)
                h = assemble_matrix(basis, z, out[onsite][atom0:atom0 + n].double(),
                                    out[pair][edge0:edge0 + e].double(), g.edge_index)
                s = overlap_matrix(basis, z, pos, grid=grid or molecular_grid(z, pos, 40, 12))
                occupied = int(round((sum(z) - float(g.total_charge.reshape(-1)[0])) / 2))
                e_ref, e_pred = orbital_energies(h_ref, s), orbital_energies(h, s)
                ef = _energy_factor(targets[pair].unit)
                row.setdefault(f"{pair}_matrix_mae", []).append(factor * float((h - h_ref).abs().mean()))
                cutoff = targets[pair].overlap_cutoff
                x = canonical_orthogonalisation(s, PREDICTED_OVERLAP_CUTOFF if cutoff is None else cutoff)
                row.setdefault(f"{pair}_orthonormal_mae", []).append(
                    factor * float((x.T @ (h - h_ref) @ x).abs().mean()))
                row.setdefault(f"{pair}_occupied_mae", []).append(
                    ef * float((e_pred[:occupied] - e_ref[:occupied]).abs().mean()))
                if occupied < e_ref.numel():
                    gaps = [float(x[occupied] - x[occupied - 1]) for x in (e_pred, e_ref)]
                    row.setdefault(f"{pair}_gap_error", []).append(ef * abs(gaps[0] - gaps[1]))
            atom0 += n
            edge0 += e
            k += 1
    report = {}
    for group, values in sorted(rows.items()):
        report[group] = {m: float(np.mean(v)) for m, v in values.items()}
    every = {}
    for values in rows.values():
        for m, v in values.items():
            every.setdefault(m, []).extend(v)
    if len(rows) > 1:
        report = {"all": {m: float(np.mean(v)) for m, v in every.items()}, **report}
    return report


def format_electronic(report: dict, targets: dict) -> str:
    """A table of :func:`electronic_report` (one row per config_type)."""
    if not report:
        return ""
    columns = list(dict.fromkeys(m for r in report.values() for m in r))

    def label(metric: str) -> str:
        for suffix, text in (("_eps_percent", "eps_rho %"), ("_electrons_error", "|dN| e"),
                             ("_matrix_mae", "MAE"), ("_orthonormal_mae", "orth. MAE"),
                             ("_occupied_mae", "occ. e MAE meV"),
                             ("_gap_error", "gap err meV")):
            if metric.endswith(suffix):
                name = metric[: -len(suffix)]
                unit = f" {targets[name].display_unit}" if suffix in ("_matrix_mae", "_orthonormal_mae") else ""
                return f"{name} {text}{unit}"
        return metric

    heads = ["config_type"] + [label(c) for c in columns]
    lines = [heads]
    for group, values in report.items():
        lines.append([group] + [f"{values[c]:.4g}" if c in values and math.isfinite(values[c]) else "-"
                                for c in columns])
    widths = [max(len(r[i]) for r in lines) for i in range(len(heads))]
    text = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
            for r in lines]
    return "\n".join(text)
