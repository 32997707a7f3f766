"""LAMMPS through ML-IAP: ``pair_style mliap unified`` over an exported clebsch model.

:func:`write_lammps` writes two files beside each other:

- ``OUT.pkl``: a pickled :class:`LammpsPotential`, which holds the exported
  program (``.pt2`` bytes, see :func:`clebsch.calculators.export`) and loads it
  lazily, once per MPI rank, on its first call;
- ``OUT.lmp``: the LAMMPS commands that use it (include it after the box is
  defined and ``neighbor`` is set): a check of the settings the model needs,
  ``comm_modify cutoff``, ``pair_style`` and ``pair_coeff``.

At every force call LAMMPS hands the wrapper the pairs of its (full) neighbour
list: ``data.pair_i`` (receiver ``i``), ``data.jatoms`` (sender ``j``, local or
ghost) and ``data.rij = x_j - x_i``, with ``data.elems`` the element of each
local and ghost atom. The program gets zero positions, ``shifts = rij`` and an
identity cell, so its edge vectors are exactly LAMMPS's; the energy is the sum
of the per-atom energies of the local atoms, and ``dE/dr_ij`` goes back as the
pair forces (``data.update_pair_forces``), from which LAMMPS adds the forces
on ``i`` and ``j`` and, per pair, the virial (so ``compute stress/atom`` gives
the per-atom virials of :func:`~clebsch.calculators.atomic_virials`).

Settings the model needs (the wrapper and ``OUT.lmp`` check them):

- ``units metal`` (Å, eV);
- ``newton on`` (LAMMPS's own check);
- a message-passing model of ``L`` hops (its receptive field, measured from the
  model, see :func:`receptive_hops`) needs the ghost atoms' own neighbour lists
  (``pair_style mliap unified OUT.pkl 1``) and ghost atoms out to ``L × cutoff``:
  ``comm_modify cutoff`` ≥ ``L × cutoff + skin``. A strictly local model
  (Allegro, one-layer models: ``L = 1``) needs neither.
"""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import torch
from ase.data import chemical_symbols

from .._memory import keep_freed_memory

__all__ = ["LammpsPotential", "write_lammps", "receptive_hops", "check_lammps_settings"]

ELEMENTS = list(chemical_symbols[1:])
"""The element names LAMMPS may give in ``pair_coeff``: every element, so that one not in the model gets a clear error."""


def receptive_hops(energy_function, numbers: list[int], cutoff: float, dtype=torch.float64, longest: int = 12) -> int:
    """How many cutoff spheres away an atom's energy reaches: 1 for strictly local models, ``num_layers`` for MPNNs.

    Measured on a zig-zag chain of atoms ``0.7 × cutoff`` apart (each sees only its
    chain neighbours): the largest ``k`` such that the energy of atom 0 moves when
    atom ``k`` moves. ``energy_function(positions, numbers, edge_index, shifts, cell)``
    returns the per-atom energies (an exported program's signature).
    """
    from ..graph import radius_graph

    n = longest + 1
    rng = np.random.default_rng(0)
    positions = np.zeros((n, 3))
    positions[:, 0] = 0.7 * cutoff * np.arange(n)
    positions[:, 1] = 0.15 * cutoff * (np.arange(n) % 2)
    positions += rng.normal(scale=0.02 * cutoff, size=positions.shape)
    edge_index, shifts = radius_graph(positions, cutoff)
    pos = torch.as_tensor(positions, dtype=dtype).requires_grad_(True)
    z = torch.as_tensor([numbers[k % len(numbers)] for k in range(n)], dtype=torch.long)
    out = energy_function(pos, z, edge_index, shifts.to(dtype), torch.zeros(3, 3, dtype=dtype))
    energies = out[0] if isinstance(out, (tuple, list)) else out
    (grad,) = torch.autograd.grad(energies[0], pos)
    moved = (grad.abs().sum(1) > 0).nonzero().flatten()
    return max(1, int(moved.max())) if len(moved) else 1


def _program_energies(model, positions, numbers, edge_index, shifts, cell):
    """Per-atom energies from an :class:`~clebsch.calculators.ExportedPotential`'s program (no total charge)."""
    args = [positions, numbers, edge_index, shifts, cell]
    if "total_charge" in model.inputs:
        args.append(torch.zeros(1, dtype=positions.dtype))
    out = model.program(*args)
    return out[0] if isinstance(out, (tuple, list)) else out


class LammpsPotential:
    """An ML-IAP unified model (``pair_style mliap unified FILE.pkl``) over an exported clebsch model.

    It has the attributes and methods LAMMPS's ``MLIAPUnified`` interface reads
    (``element_types``, ``ndescriptors``, ``nparams``, ``rcutfac``,
    ``compute_gradients``, ...) without importing LAMMPS, so it pickles and
    unpickles anywhere clebsch is installed; the exported program is loaded
    on the first call on each rank.

    Parameters
    ----------
    program : bytes
        A ``.pt2`` archive written by :func:`clebsch.calculators.export`.
    elements : sequence of str, optional
        Element names this model may be given in ``pair_coeff`` (default: those
        the model knows); each must be one the model knows.
    """

    def __init__(self, program: bytes, elements=None):
        from ._export import ExportedPotential, load_exported  # noqa: F401  (checked loadable below)

        self.program = bytes(program)
        model = self._load_program()
        self.cutoff = float(model.cutoff)
        self.species = [int(z) for z in model.species]
        self.dtype = str(model.dtype).replace("torch.", "")
        self.family = str(model.config.get("name", "model"))
        if model.open_only:
            raise ValueError("this model has a coulomb or d3 physics term, exported for open structures only; it cannot "
                             "run in LAMMPS, whose cells are periodic")
        conditioning = list(getattr(model, "conditioning", ()) or ())
        if conditioning:
            raise ValueError(f"this model is conditioned on {', '.join(conditioning)} per structure "
                             "(model.conditioning); LAMMPS's ML-IAP interface passes no total charge or spin, so it "
                             "cannot run there")
        known = [chemical_symbols[z] for z in self.species]
        elements = known if elements is None else list(elements)
        for name in elements:
            if name not in known:
                raise ValueError(f"element {name!r} is not in the model: it knows {known}")
        self.elements = elements
        self.hops = receptive_hops(lambda *args: _program_energies(model, *args), self.species, self.cutoff,
                                   model.dtype)
        # the ML-IAP interface: every element name is accepted, so that pair_coeff with an element
        # outside the model reaches compute_gradients and gets a clear error there
        self.element_types = ELEMENTS
        self.ndescriptors = 1
        self.nparams = 1
        self.rcutfac = 0.5 * self.cutoff  # ML-IAP's cutoff is 2 * rcutfac
        self.interface = None
        self._model = model

    # ------------------------------------------------------------------ settings
    @property
    def ghost_neighbors(self) -> bool:
        """Whether ghost atoms need their own neighbour lists (``pair_style mliap unified FILE 1``)."""
        return self.hops > 1

    def ghost_cutoff(self, skin: float) -> float:
        """The smallest ``comm_modify cutoff`` (Å) that keeps results exact: ``hops × cutoff + skin``."""
        return self.hops * self.cutoff + float(skin)

    def describe(self) -> str:
        hops = (f"{self.hops} hops: needs ghost neighbour lists (pair_style mliap unified FILE 1) and "
                f"comm_modify cutoff >= {self.hops} x {self.cutoff:g} + skin" if self.ghost_neighbors else
                "strictly local: ghost atoms out to the pair cutoff suffice")
        return (f"clebsch {self.family} ({self.dtype}) for LAMMPS: elements {self.elements}, cutoff {self.cutoff:g} Å, "
                f"{hops}; units metal; newton on")

    # ------------------------------------------------------------------ pickling
    def __getstate__(self):
        state = dict(self.__dict__)
        state["_model"] = None
        state["interface"] = None
        return state

    def _load_program(self):
        from ._export import ExportedPotential, _META

        extra = {_META: ""}
        program = torch.export.load(io.BytesIO(self.program), extra_files=extra)
        import json

        return ExportedPotential(program.module(), json.loads(extra[_META]))

    @property
    def model(self):
        if self._model is None:
            keep_freed_memory()  # each LAMMPS step reuses the memory the last one freed (see clebsch._memory)
            self._model = self._load_program()
        return self._model

    # ------------------------------------------------------------------ ML-IAP interface
    def compute_descriptors(self, data):
        """Nothing to do: the model reads the pairs in :meth:`compute_gradients`."""

    def compute_forces(self, data):
        """Nothing to do: :meth:`compute_gradients` has passed the pair forces."""

    def _species(self, elems: np.ndarray) -> torch.Tensor:
        numbers = np.asarray(elems, dtype=np.int64) + 1  # element_types is every element, Z - 1 = its index
        numbers = np.where(numbers > 0, numbers, self.species[0])  # NULL-typed atoms (elems -1) are never used
        unknown = ~np.isin(numbers, self.species)
        if unknown.any():
            bad = sorted({chemical_symbols[z] for z in numbers[unknown]})
            raise ValueError(f"pair_coeff maps atom types to {bad}, not in the model: it knows "
                             f"{[chemical_symbols[z] for z in self.species]}")
        return torch.as_tensor(numbers, dtype=torch.long)

    def receptive_pairs(self, pair_i: np.ndarray, pair_j: np.ndarray, owned: np.ndarray, n: int) -> np.ndarray:
        """Which pairs can reach an owned atom's energy: those whose receiver is fewer than ``hops`` hops away.

        An owned atom's energy after ``L = hops`` message passes depends on the
        features of atoms up to ``L - 1`` hops away (along the neighbour graph),
        which are built from the pairs those atoms receive; atoms ``L`` hops
        away only send their species. Every other pair LAMMPS hands over (most
        of the outer ghost shell: ``comm_modify cutoff`` reaches ``L`` cutoffs
        out) has a zero gradient and is skipped.
        """
        keep_depth = self.hops - 1
        depth = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        depth[owned] = 0
        for h in range(1, keep_depth + 1):
            reached = pair_j[depth[pair_i] == h - 1]
            depth[reached] = np.minimum(depth[reached], h)
        return depth[pair_i] <= keep_depth

    def energies_and_pair_gradients(self, numbers: torch.Tensor, pair_i: np.ndarray, pair_j: np.ndarray,
                                    rij: np.ndarray, owned: np.ndarray):
        """Per-atom energies [ntotal] and ``dE/dr_ij`` [npairs, 3] of the owned atoms' total energy.

        The model runs on the pairs that reach the owned atoms (:meth:`receptive_pairs`)
        and on the atoms they touch only; the other pairs get a zero gradient and
        the other atoms a zero energy.
        """
        model = self.model
        dtype = model.dtype
        n = numbers.shape[0]
        pair_i = np.asarray(pair_i, dtype=np.int64)
        pair_j = np.asarray(pair_j, dtype=np.int64)
        owned = np.asarray(owned, dtype=np.int64)
        rij = np.asarray(rij, dtype=np.float64).reshape(-1, 3)
        keep = self.receptive_pairs(pair_i, pair_j, owned, n)
        atoms = np.unique(np.concatenate([owned, pair_i[keep], pair_j[keep]]))
        local = np.full(n, -1, dtype=np.int64)
        local[atoms] = np.arange(len(atoms))
        edge_index = torch.as_tensor(np.stack([local[pair_j[keep]], local[pair_i[keep]]]), dtype=torch.long)
        vectors = torch.as_tensor(rij[keep], dtype=dtype).requires_grad_(True)
        energies = _program_energies(model, torch.zeros(len(atoms), 3, dtype=dtype),
                                     numbers[torch.as_tensor(atoms, dtype=torch.long)], edge_index.reshape(2, -1),
                                     vectors, torch.eye(3, dtype=dtype))
        energy = energies[torch.as_tensor(local[owned], dtype=torch.long)].sum()
        grad = torch.zeros(len(rij), 3, dtype=torch.float64)
        if vectors.shape[0]:
            (g,) = torch.autograd.grad(energy, vectors, allow_unused=True)
            if g is not None:
                grad[torch.as_tensor(keep)] = g.detach().double()
        full = torch.zeros(n, dtype=torch.float64)
        full[torch.as_tensor(atoms, dtype=torch.long)] = energies.detach().double()
        return full, grad

    def compute_gradients(self, data):
        """The energy, per-atom energies and pair forces of this rank's atoms, handed to LAMMPS."""
        nlist = int(data.nlistatoms)
        if self.ghost_neighbors and int(data.natomneigh) <= nlist and int(data.ntotal) > int(data.nlocal):
            raise ValueError(
                f"this {self.family} model reaches {self.hops} x {self.cutoff:g} Å (message passing over "
                f"{self.hops} hops): ghost atoms need their own neighbour lists -- use "
                f"'pair_style mliap unified FILE.pkl 1' and 'comm_modify cutoff' >= {self.hops * self.cutoff:g} + skin")
        numbers = self._species(data.elems)
        owned = np.asarray(data.iatoms)[:nlist]
        npairs = int(data.npairs)
        pair_i = np.asarray(data.pair_i)[:npairs] if npairs else np.zeros(0, dtype=np.int64)
        pair_j = np.asarray(data.jatoms)[:npairs] if npairs else np.zeros(0, dtype=np.int64)
        rij = np.asarray(data.rij)[:npairs] if npairs else np.zeros((0, 3))
        energies, grad = self.energies_and_pair_gradients(numbers, pair_i, pair_j, rij, owned)
        e_owned = energies[torch.as_tensor(owned, dtype=torch.long)].numpy()
        data.energy = float(e_owned.sum())
        if data.eflag and nlist:
            data.eatoms = np.ascontiguousarray(e_owned, dtype=np.float64)
        if npairs:
            data.update_pair_forces(np.ascontiguousarray(grad.numpy(), dtype=np.float64))


def check_lammps_settings(lmp, potential: LammpsPotential) -> float:
    """Check a running LAMMPS against what ``potential`` needs; return the ``comm_modify cutoff`` to set.

    ``lmp`` is a :class:`lammps.lammps` handle (or the pointer LAMMPS's
    ``python ... SELF`` passes). Raises :class:`ValueError` naming the setting.
    """
    if not hasattr(lmp, "extract_global"):
        from lammps import lammps

        lmp = lammps(ptr=lmp)
    units = lmp.extract_global("units")
    if units != "metal":
        raise ValueError(f"clebsch models need 'units metal' (Å, eV), but this LAMMPS input uses 'units {units}'")
    skin = float(lmp.extract_global("neigh_skin"))
    return potential.ghost_cutoff(skin)


_CHECK = '''python clebsch_settings input 1 SELF return v_clebsch_ghost_cutoff format pf here """
def clebsch_settings(lmp):
    import pickle
    from clebsch.calculators.lammps import check_lammps_settings
    with open({pkl!r}, "rb") as f:
        return check_lammps_settings(lmp, pickle.load(f))
"""
variable clebsch_ghost_cutoff python clebsch_settings
'''


def write_lammps(model_path, out_path, elements=None, dtype: str = "float64") -> tuple[str, str]:
    """Write ``OUT.pkl`` (the ML-IAP unified model) and ``OUT.lmp`` (the LAMMPS commands) for a model.

    Parameters
    ----------
    model_path : str or os.PathLike or Potential
        A packaged model (``.pt``, exported here in ``dtype``), an exported
        ``.pt2``, or a model object.
    out_path : str or os.PathLike
        ``OUT`` or ``OUT.pkl``.
    elements : sequence of str, optional
        The element names, in the order of LAMMPS's atom types, for ``pair_coeff * *``
        (default: the model's elements).

    Returns
    -------
    (str, str)
        The ``.pkl`` and ``.lmp`` paths.
    """
    import tempfile

    from ._export import export

    out = os.fspath(out_path)
    base = out[:-4] if out.endswith(".pkl") else out
    pkl, lmp_in = base + ".pkl", base + ".lmp"
    if isinstance(model_path, (str, os.PathLike)) and os.fspath(model_path).endswith(".pt2"):
        with open(model_path, "rb") as f:
            program = f.read()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = export(model_path, os.path.join(tmp, "model.pt2"), dtype=dtype)
            with open(path, "rb") as f:
                program = f.read()
    potential = LammpsPotential(program, elements)
    from .._atomic import atomic_open

    with atomic_open(pkl, "wb") as f:
        pickle.dump(potential, f)
    flag = 1 if potential.ghost_neighbors else 0
    absolute = os.path.abspath(pkl)
    lines = [f"# {potential.describe()}",
             "# include after the box is defined and after 'neighbor' (the skin enters the ghost cutoff)"]
    if potential.ghost_neighbors:
        lines += [_CHECK.format(pkl=absolute).rstrip("\n"), "comm_modify cutoff ${clebsch_ghost_cutoff}"]
    lines += [f"pair_style mliap unified {absolute} {flag}", f"pair_coeff * * {' '.join(potential.elements)}", ""]
    with atomic_open(lmp_in, "w") as f:
        f.write("\n".join(lines))
    return pkl, lmp_in
