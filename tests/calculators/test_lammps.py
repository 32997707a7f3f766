"""The LAMMPS ML-IAP wrapper: against the ASE calculator, in an emulation of LAMMPS's data and in LAMMPS itself.

The emulation (always run) builds what LAMMPS hands ``compute_gradients``:
local atoms, ghost images out to a ghost cutoff, a full neighbour list of the
local atoms (and of the ghosts when the model asks for it), and folds the ghost
forces back onto their owners as LAMMPS's reverse communication does.

The LAMMPS tests run when ``scripts/build_lammps.sh`` has built LAMMPS with
ML-IAP and PYTHON (its ``lammps`` module importable, ``mpiexec`` from the build
cache); otherwise they skip, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk

from clebsch.calculators import ClebschCalculator, export
from clebsch.calculators.lammps import LammpsPotential, receptive_hops, write_lammps

from .conftest import small_model

CACHE = Path(os.environ.get("CLEBSCH_LAMMPS_CACHE", Path.home() / ".cache" / "clebsch" / "lammps"))


# ---------------------------------------------------------------- emulated LAMMPS
class FakeData:
    """The attributes of LAMMPS's MLIAPDataPy that the wrapper reads and writes."""

    def __init__(self, elems, nlocal, pair_i, jatoms, rij, natomneigh):
        self.elems, self.nlocal, self.ntotal = elems, nlocal, len(elems)
        self.nlistatoms, self.natomneigh = nlocal, natomneigh
        self.iatoms = np.arange(natomneigh)
        self.pair_i, self.jatoms, self.rij = pair_i, jatoms, rij
        self.npairs = len(pair_i)
        self.eflag = 1
        self.energy = None
        self.eatoms = None
        self.f = np.zeros((self.ntotal, 3))
        self.pair_virial = np.zeros((self.ntotal, 3, 3))

    def update_pair_forces(self, fij):
        np.add.at(self.f, self.pair_i, fij)
        np.add.at(self.f, self.jatoms, -fij)
        w = -0.5 * self.rij[:, :, None] * fij[:, None, :]
        np.add.at(self.pair_virial, self.pair_i, w)
        np.add.at(self.pair_virial, self.jatoms, w)


def emulate(potential, atoms, ghost_cutoff, ghost_lists):
    """Energy, forces (ghosts folded onto owners) and per-atom virials as LAMMPS would get them."""
    n = len(atoms)
    cell = atoms.cell.array
    reach = int(np.ceil(ghost_cutoff / min(np.linalg.norm(cell, axis=1)))) + 1
    rng = range(-reach, reach + 1)
    images = [(a, b, c) for a in rng for b in rng for c in rng if (a, b, c) != (0, 0, 0)]
    x = [atoms.positions]
    owner = [np.arange(n)]
    frac_lo, frac_hi = -ghost_cutoff, ghost_cutoff
    inv = np.linalg.inv(cell)
    for s in images:
        p = atoms.positions + np.array(s) @ cell
        # a ghost: within ghost_cutoff of the box (in each direction of an orthogonal box)
        f = p @ inv * np.diag(cell)
        keep = np.all((f > frac_lo) & (f < np.diag(cell) + frac_hi), axis=1)
        x.append(p[keep])
        owner.append(np.arange(n)[keep])
    x, owner = np.concatenate(x), np.concatenate(owner)
    receivers = len(x) if ghost_lists else n
    d = x[None, :, :] - x[:receivers, None, :]
    r = np.linalg.norm(d, axis=-1)
    i, j = np.nonzero((r < potential.cutoff) & (r > 0))
    data = FakeData(atoms.numbers[owner] - 1, n, i, j, d[i, j], receivers if ghost_lists else n)
    potential.compute_gradients(data)
    kept = potential.receptive_pairs(i, j, np.arange(n), len(x))
    # the pairs the model runs on: all of the local atoms' pairs, none beyond hops - 1
    assert kept[i < n].all() and (kept.sum() < len(i) if ghost_lists else kept.all())
    forces = np.zeros((n, 3))
    np.add.at(forces, owner, data.f)
    virials = np.zeros((n, 3, 3))
    np.add.at(virials, owner, data.pair_virial)
    return data.energy, forces, virials, data.eatoms


@pytest.fixture(scope="module")
def copper_box():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=3)
    return atoms


def _potential(model, tmp_path, name="m"):
    pkl, _ = write_lammps(model, tmp_path / name)
    import pickle

    with open(pkl, "rb") as f:
        return pickle.load(f)


@pytest.mark.parametrize("family,layers", [("schnet", 1), ("schnet", 2), ("dimenet", 1), ("visnet", 2),
                                           ("allegro", 2), ("tensornet", 2)])
def test_emulated_lammps_equals_ase(tmp_path, copper_box, family, layers):
    """Exact for every kind of receptive field (node messages, edge messages, triplets, strictly local pairs),
    with the pairs that cannot reach a local atom pruned."""
    from clebsch.testing import float64_model

    from .conftest import SPECIES

    sizes = {"dimenet": {"hidden_channels": 8, "int_emb_size": 4, "basis_emb_size": 4, "out_emb_channels": 8,
                         "num_spherical": 3, "num_radial": 4},
             "allegro": {"num_tensor_features": 4, "lmax": 1, "latent_dim": 8}}.get(family, {"channels": 8})
    model = float64_model({"name": family, "species": SPECIES, "cutoff": 3.0, "scale": 0.5,
                           "atomic_energies": [-13.6, -1029.0, -2041.0, -1300.0], "num_layers": layers,
                           "outputs": ["energy", "forces", "stress"], **sizes}, 0)
    potential = _potential(model, tmp_path)
    # the receptive field in hops: one per layer, one more where an embedding or an edge update sums over
    # neighbours first (DimeNet's triplets, TensorNet's embedding, ViSNet's edge updates); Allegro is strictly local
    assert potential.hops == 1 if family == "allegro" else layers <= potential.hops <= layers + 1
    assert potential.ghost_neighbors == (potential.hops > 1)
    layers = potential.hops
    energy, forces, virials, eatoms = emulate(potential, copper_box, potential.ghost_cutoff(0.0) + 0.5, layers > 1)
    calc = ClebschCalculator(model, skin=0.0)
    atoms = copper_box.copy()
    atoms.calc = calc
    assert abs(energy - atoms.get_potential_energy()) < 1e-8
    np.testing.assert_allclose(forces, atoms.get_forces(), atol=1e-8)
    np.testing.assert_allclose(eatoms, atoms.get_potential_energies(), atol=1e-8)
    stress = -virials.sum(0) / atoms.get_volume()
    np.testing.assert_allclose(stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]], atoms.get_stress(), atol=1e-8)
    per_atom = -0.5 * (virials + virials.transpose(0, 2, 1)) / atoms.get_volume()
    np.testing.assert_allclose(per_atom[:, [0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]],
                               atoms.get_stresses(), atol=1e-8)


def test_emulated_two_layers_wrong_when_ghosts_too_short(tmp_path, copper_box):
    """A ghost shell of one cutoff (too short for two hops) gives visibly wrong forces: the setting matters."""
    model = small_model("schnet", cutoff=3.0, num_layers=2)
    potential = _potential(model, tmp_path)
    _, forces, _, _ = emulate(potential, copper_box, 1.0 * potential.cutoff + 0.2, True)
    atoms = copper_box.copy()
    atoms.calc = ClebschCalculator(model, skin=0.0)
    assert np.abs(forces - atoms.get_forces()).max() > 1e-6


@pytest.mark.parametrize("name, hops", [("schnet", 3), ("nequip", 2), ("allegro", 1)])
def test_receptive_hops(name, hops):
    from clebsch.testing import float64_model

    layers = {"schnet": 3, "nequip": 2, "allegro": 2}[name]
    model = float64_model({"name": name, "species": ["Cu"], "cutoff": 3.0, "num_layers": layers}, 0)

    def energies(positions, numbers, edge_index, shifts, cell):
        vectors = positions[edge_index[0]] - positions[edge_index[1]] + shifts @ cell
        return model.atomic_energies_and_features(model.species_index(numbers), edge_index, vectors)[0]

    assert receptive_hops(energies, [29], 3.0) == hops


def test_missing_ghost_lists_named(tmp_path, copper_box):
    potential = _potential(small_model("schnet", cutoff=3.0, num_layers=2), tmp_path)
    with pytest.raises(ValueError, match=r"pair_style mliap unified FILE.pkl 1.*comm_modify cutoff"):
        emulate(potential, copper_box, 2 * potential.cutoff + 0.5, ghost_lists=False)


def test_element_not_in_model_named(tmp_path, copper_box):
    potential = _potential(small_model("schnet", cutoff=3.0, species=["H", "Cu"], atomic_energies=[0.0, 0.0]),
                           tmp_path)
    atoms = copper_box.copy()
    atoms.numbers[:] = 26  # pair_coeff * * Fe
    with pytest.raises(ValueError, match=r"\['Fe'\], not in the model: it knows \['H', 'Cu'\]"):
        emulate(potential, atoms, 2 * potential.cutoff + 0.5, True)
    with pytest.raises(ValueError, match="element 'Fe' is not in the model"):
        write_lammps(small_model("schnet", cutoff=3.0), tmp_path / "x", elements=["Cu", "Fe"])


def test_written_input_names_settings(tmp_path):
    model = small_model("schnet", cutoff=3.0, num_layers=2)
    pkl, lmp = write_lammps(model, tmp_path / "cu", elements=["Cu"])
    text = Path(lmp).read_text()
    assert f"pair_style mliap unified {os.path.abspath(pkl)} 1" in text
    assert "pair_coeff * * Cu" in text and "comm_modify cutoff ${clebsch_ghost_cutoff}" in text
    assert "units metal" in text and "newton on" in text
    one = write_lammps(small_model("schnet", cutoff=3.0, num_layers=1), tmp_path / "one.pkl")[1]
    assert "comm_modify" not in Path(one).read_text() and Path(one).read_text().rstrip().endswith("H C O Cu")


def test_from_exported_file(tmp_path, copper_box):
    model = small_model("schnet", cutoff=3.0, num_layers=1)
    pt2 = export(model, tmp_path / "m.pt2")
    potential = _potential(pt2, tmp_path, "from_pt2")
    energy, *_ = emulate(potential, copper_box, potential.cutoff + 0.5, False)
    atoms = copper_box.copy()
    atoms.calc = ClebschCalculator(model)
    assert abs(energy - atoms.get_potential_energy()) < 1e-8


# ---------------------------------------------------------------- real LAMMPS
def _lammps_ready() -> str | None:
    """None when LAMMPS with ML-IAP + PYTHON and mpiexec are usable, else why not."""
    try:
        import lammps  # noqa: F401
    except ImportError:
        return "LAMMPS's Python module is not importable: build it with scripts/build_lammps.sh"
    if not (CACHE / "tools" / "bin" / "mpiexec").exists():
        return f"no mpiexec in {CACHE}/tools/bin: build LAMMPS with scripts/build_lammps.sh"
    return None


needs_lammps = pytest.mark.skipif(_lammps_ready() is not None, reason=str(_lammps_ready()))

_DRIVER = textwrap.dedent('''
    import json, sys
    import numpy as np
    import lammps, lammps.mliap
    spec = json.loads(sys.argv[1])
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    lammps.mliap.activate_mliappy(lmp)
    for line in spec["commands"]:
        lmp.command(line)
    me = lmp.extract_setting("world_rank")
    natoms = lmp.get_natoms()
    x = lmp.gather_atoms("x", 1, 3); f = lmp.gather_atoms("f", 1, 3)
    out = {"energy": lmp.get_thermo("pe"), "press": [lmp.get_thermo(k) for k in ("pxx", "pyy", "pzz", "pyz", "pxz", "pxy")],
           "x": list(x), "f": list(f), "vol": lmp.get_thermo("vol")}
    if "peratom" in spec:
        lmp.command("compute sa all stress/atom NULL virial")
        lmp.command("run 0")
        out["stresses"] = list(lmp.gather("c_sa", 1, 6))
    if me == 0:
        with open(spec["out"], "w") as fh:
            json.dump(out, fh)
    lmp.close()
''')


def _run_lammps(tmp_path, ranks, commands, tag, peratom=False):
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    spec = {"commands": commands, "out": str(tmp_path / f"{tag}.json")}
    if peratom:
        spec["peratom"] = True
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [str(CACHE / "tools" / "bin" / "mpiexec"), "-n", str(ranks), sys.executable, str(driver), json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode:
        raise AssertionError(f"LAMMPS failed ({' '.join(cmd[:4])}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(Path(spec["out"]).read_text())


def _setup(atoms, lmp_file, data_file, extra=()):
    from ase.io import write

    write(data_file, atoms, format="lammps-data", masses=True, specorder=["Cu"])
    return ["units metal", "atom_style atomic", "atom_modify map yes", "newton on", "boundary p p p",
            f"read_data {data_file}", "neighbor 1.0 bin", f"include {lmp_file}", *extra, "thermo_style custom step pe pxx pyy pzz pyz pxz pxy vol",
            "run 0"]


@needs_lammps
@pytest.mark.parametrize("ranks", [1, 2])
def test_lammps_equals_ase(tmp_path, copper_box, ranks):
    model = small_model("schnet", cutoff=3.0, num_layers=2)
    _, lmp_file = write_lammps(model, tmp_path / "cu", elements=["Cu"])
    atoms = copper_box.copy()
    out = _run_lammps(tmp_path, ranks, _setup(atoms, lmp_file, tmp_path / "cu.data"), f"r{ranks}", peratom=True)
    atoms.calc = ClebschCalculator(model, skin=0.0)
    assert abs(out["energy"] - atoms.get_potential_energy()) < 1e-8
    np.testing.assert_allclose(np.reshape(out["f"], (-1, 3)), atoms.get_forces(), atol=1e-8)
    from ase.units import GPa

    bar = 1e-4 * GPa
    np.testing.assert_allclose(-np.array(out["press"]) * bar, atoms.get_stress(), atol=1e-8)
    stresses = np.reshape(out["stresses"], (-1, 6))
    # compute stress/atom: S_i = -W_i in bar*Å^3 (so sum_i S_i / V = -P, ASE's stress); ASE: S_i / V;
    # LAMMPS's Voigt order xx yy zz xy xz yz
    ase_order = stresses[:, [0, 1, 2, 5, 4, 3]] * bar / out["vol"]
    np.testing.assert_allclose(ase_order, atoms.get_stresses(), atol=1e-8)


@needs_lammps
@pytest.mark.parametrize("layers", [2, 3])
def test_lammps_one_and_two_ranks_same_nve(tmp_path, layers):
    model = small_model("schnet", cutoff=3.0, num_layers=layers)
    _, lmp_file = write_lammps(model, tmp_path / "cu", elements=["Cu"])
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (3, 3, 3)
    atoms.rattle(0.05, seed=4)
    md = ["velocity all create 300 7 mom yes rot no", "fix nve all nve", "timestep 0.001", "run 200"]
    steps = 200 if layers == 2 else 20
    md[-1] = f"run {steps}"
    one = _run_lammps(tmp_path, 1, _setup(atoms, lmp_file, tmp_path / "a.data", md), "one")
    two = _run_lammps(tmp_path, 2, _setup(atoms, lmp_file, tmp_path / "b.data", md), "two")
    np.testing.assert_allclose(two["x"], one["x"], atol=1e-8)
    assert abs(two["energy"] - one["energy"]) < 1e-8


@needs_lammps
def test_lammps_unit_check(tmp_path, copper_box):
    model = small_model("schnet", cutoff=3.0, num_layers=2)
    _, lmp_file = write_lammps(model, tmp_path / "cu", elements=["Cu"])
    commands = _setup(copper_box, lmp_file, tmp_path / "cu.data")
    commands[0] = "units real"
    with pytest.raises(AssertionError, match="units metal"):
        _run_lammps(tmp_path, 1, commands, "units")


def test_skip_reason_is_clear():
    reason = _lammps_ready()
    assert reason is None or "scripts/build_lammps.sh" in reason


TRAINED = Path(__file__).resolve().parent.parent / "fixtures" / "cu_nequip_trained.pt"


@needs_lammps
def test_lammps_nve_drift_trained_model(tmp_path):
    """1,000 NVE steps (1 fs, from 600 K) with a trained two-layer NequIP (scripts/make_test_models.py):
    the total energy stays within 1 meV/atom of its start."""
    _, lmp_file = write_lammps(TRAINED, tmp_path / "cu", elements=["Cu"])
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    atoms.rattle(0.02, seed=5)
    log = tmp_path / "etotal.txt"
    md = ["velocity all create 600 11 mom yes rot no", "fix nve all nve", "timestep 0.001",
          "compute kin all ke", "compute pot all pe", "variable etotal equal c_pot+c_kin",
          f'fix log all print 10 "$(step) $(v_etotal:%.10f)" file {log} screen no', "run 1000"]
    _run_lammps(tmp_path, 1, _setup(atoms, lmp_file, tmp_path / "cu.data", md), "drift")
    steps, etotal = np.loadtxt(log, comments="#", unpack=True)
    assert steps[-1] == 1000
    deviation = np.abs(etotal - etotal[0]).max() / len(atoms)
    assert deviation < 1e-3, f"total energy moved by {deviation * 1e3:.3f} meV/atom over 1,000 steps"
