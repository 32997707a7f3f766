"""``CommitteeCalculator``: an ASE calculator over a committee of models, with uncertainties."""

from __future__ import annotations

import os

import numpy as np
from ase.calculators.calculator import PropertyNotImplementedError, all_changes

from ..uncertainty import Committee
from ._calculator import ClebschCalculator, _as_device, _as_dtype, _check_finite

__all__ = ["CommitteeCalculator"]


class CommitteeCalculator(ClebschCalculator):
    """ASE calculator: the mean of a committee's predictions and their spread.

    Every member is evaluated on the same graph (one neighbour list, reused
    with a Verlet skin as in :class:`ClebschCalculator`, which this class
    extends, so :func:`~clebsch.calculators.md` and
    :func:`~clebsch.calculators.relax` accept it).

    Parameters
    ----------
    models : str or os.PathLike or sequence
        A committee file (``committee.json``, written by ``clebsch train`` with
        ``training.committee > 1`` or by :func:`clebsch.uncertainty.save_committee`),
        or a sequence of models and/or packaged model files (at least 2), or a
        :class:`~clebsch.uncertainty.Committee`. All members must share cutoff
        and species; otherwise a :class:`~clebsch.uncertainty.CommitteeError`
        names the files.
    device : str
    dtype : {"float64", "float32"}
    skin : float
        Verlet skin in Å (0: a fresh neighbour list at every call).
    calibration : dict, optional
        ``{"energy": s_E, "forces": s_F}``: factors the standard deviations are
        multiplied by; default: those stored in the committee file (1 if none).
        :meth:`Committee.calibrate <clebsch.uncertainty.Committee.calibrate>`
        fits them on validation frames.
    **kwargs
        Passed to :class:`ase.calculators.calculator.Calculator`.

    Notes
    -----
    ``results`` (and ``atoms.calc.results``) hold the committee mean as
    ``energy`` / ``free_energy`` (eV), ``energies`` (per atom), ``forces``
    [N, 3] (eV/Å) and, for cells periodic in all three directions, ``stress``
    (eV/Å³, Voigt order, ASE's sign); and the calibrated standard deviations
    over the members (``ddof=1``): ``energy_std`` (eV), ``forces_std`` [N, 3]
    (per Cartesian component, eV/Å), ``forces_uncertainty`` [N] (per atom, the
    norm ``sqrt(sum_a forces_std[:, a]**2)``, eV/Å), ``stress_std`` (Voigt, where
    there is a stress), and each member's ``energy_members`` [K] and
    ``forces_members`` [K, N, 3]. Read the extra ones with
    ``atoms.calc.results["forces_std"]`` or ``calc.get_property("forces_std", atoms)``.

    Examples
    --------
    >>> from ase.build import molecule
    >>> from clebsch.testing import float64_model
    >>> cfg = {"name": "schnet", "species": ["H", "O"], "cutoff": 3.0, "num_layers": 1, "channels": 4}
    >>> atoms = molecule("H2O")
    >>> atoms.calc = CommitteeCalculator([float64_model(cfg, seed) for seed in range(3)])
    >>> atoms.get_forces().shape, atoms.calc.results["forces_std"].shape, atoms.calc.results["energy_std"] >= 0
    ((3, 3), (3, 3), True)
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress", "energy_std", "forces_std",
                              "forces_uncertainty", "stress_std", "energy_members", "forces_members"]

    def __init__(self, models, device: str = "cpu", dtype: str = "float64", skin: float = 0.5,
                 calibration: dict | None = None, **kwargs):
        dev, dt = _as_device(device), _as_dtype(dtype)
        if isinstance(models, Committee):
            committee = models.to(device=dev, dtype=dt)
        elif isinstance(models, (str, os.PathLike)):
            committee = Committee.load(models, device=dev, dtype=dt)
        else:
            committee = Committee.from_models(list(models), device=dev, dtype=dt)
        if calibration is not None:
            committee.calibration.update({k: float(v) for k, v in calibration.items()})
        self.committee = committee
        super().__init__(committee.members[0], device=device, dtype=dtype, skin=skin, **kwargs)
        self.has_dipole = False
        self.implemented_properties = list(type(self).implemented_properties)

    @property
    def calibration(self) -> dict:
        return self.committee.calibration

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        """Evaluate every member on ``atoms`` (one graph) and fill ``self.results``."""
        properties = properties or ["energy"]
        super(ClebschCalculator, self).calculate(atoms, properties, system_changes)
        atoms = self.atoms
        periodic = bool(np.all(atoms.pbc))
        for name in ("stress", "stress_std"):
            if name in properties and not periodic:
                raise PropertyNotImplementedError(
                    f"{name} needs a structure periodic in all three directions, but pbc is {atoms.pbc.tolist()}")
        graph = self.graph(atoms)
        out = self.committee.predict(graph, compute_stress=periodic)
        _check_finite({k: out[k] for k in ("energy", "forces", "stress") if k in out}, len(atoms))

        def array(key):
            return out[key].detach().cpu().double().numpy()

        energy = float(array("energy").sum())
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": array("atomic_energies"),
            "forces": array("forces"),
            "energy_std": float(array("energy_std").sum()),
            "forces_std": array("forces_std"),
            "forces_uncertainty": array("forces_uncertainty"),
            "energy_members": array("energy_members")[:, 0],
            "forces_members": array("forces_members"),
        }
        if periodic and "stress" in out:
            for key in ("stress", "stress_std"):
                s = array(key)[0]
                self.results[key] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
