"""Fine-tuning from a packaged model: init-from, freezing, new elements, replay through a second energy head."""

import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from clebsch.data.dataset import AtomicDataset
from clebsch.graph import AtomicGraph
from clebsch.graph import batch as batch_graphs
from clebsch.models import build_model
from clebsch.models.package import PackageError, load
from clebsch.train.config import ConfigError, load_config
from clebsch.train.evaluate import evaluate
from clebsch.train.finetune import freeze, grow_species, merge_config, read_base
from clebsch.train.trainer import Trainer, train

from .conftest import make_frames, quiet

CUTOFF = 3.0


def labelled(name, n, seed, factor=1.0, shift=0.0):
    """``n`` rattled copies of a molecule labelled with EMT: energies ``factor * E + shift * n_atoms``, forces
    ``factor * F``."""
    frames = []
    for i in range(n):
        atoms = molecule(name)
        atoms.rattle(0.08, seed=seed + i)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=factor * energy + shift * len(atoms), forces=factor * forces)
        frames.append(atoms)
    return frames


def run_config(run_dir, train_file, epochs=2, **extra):
    config = {"run_dir": str(run_dir), "seed": 3, "dtype": "float64", "device": "cpu",
              "data": {"train": str(train_file), "valid_fraction": 0.2, "batch_size": 4},
              "optimizer": {"lr": 0.01},
              "training": {"max_epochs": epochs, "progress": False, "plots": False}}
    config.update(extra)
    return config


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A small SchNet trained on EMT ethanol (H, C, O), and its data."""
    root = tmp_path_factory.mktemp("finetune")
    original = root / "original.xyz"
    ase.io.write(original, make_frames(20))
    config = run_config(root / "pre", original, epochs=10,
                        model={"name": "schnet", "cutoff": CUTOFF, "num_layers": 2, "channels": 8})
    result = train(config, log=quiet)
    return root, original, result["model_path"]


def graphs_of(path, dtype=torch.float64):
    return AtomicDataset.from_file(path, CUTOFF, dtype=dtype).graphs


def predictions(model, graphs):
    out = model(batch_graphs(graphs).to(dtype=torch.float64))
    return out["energy"].detach(), out["forces"].detach()


def setup_trainer(config):
    trainer = Trainer(load_config(None, base=config), log=quiet)
    trainer.setup()
    trainer._unlock()
    return trainer


def test_init_from_reproduces_the_packaged_model_at_step_zero(pretrained, tmp_path):
    root, original, model_path = pretrained
    config = run_config(tmp_path / "ft", original, optimizer={"name": "adamw", "lr": 0.01, "weight_decay": 0.1},
                        finetune={"init_from": model_path, "freeze": ["representation.embedding"]})
    trainer = setup_trainer(config)
    assert trainer.config.model.name == "schnet" and trainer.config.model.channels == 8  # taken from the package
    embedding = trainer.model.representation.embedding.weight
    optimised = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert not embedding.requires_grad and all(p is not embedding for p in optimised)  # no gradient, no decay
    assert len(optimised) == sum(1 for _ in trainer.model.parameters()) - 1
    base = load(model_path, dtype=torch.float64)
    graphs = graphs_of(original)[:6]
    e0, f0 = predictions(base, graphs)
    e1, f1 = predictions(trainer.model, graphs)
    torch.testing.assert_close(e1, e0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f1, f0, rtol=1e-12, atol=1e-12)


def test_freeze_keeps_weights_bit_identical_and_resume_continues(pretrained, tmp_path):
    root, original, model_path = pretrained
    messages = []
    finetune = {"init_from": model_path, "freeze": ["representation.embedding", "representation.interactions.0"],
                "replay": {"data": str(original), "fraction": 0.5}}
    extra = {"finetune": finetune, "training": {"max_epochs": 3, "progress": False, "plots": False, "ema_decay": 0.9}}
    full = run_config(tmp_path / "full", original, **extra)
    result = train(full, log=messages.append)
    before = torch.load(model_path, weights_only=True)["state_dict"]
    after = torch.load(result["model_path"], weights_only=True)["state_dict"]
    frozen = [k for k in before if k.startswith(("representation.embedding", "representation.interactions.0."))]
    line = next(m for m in messages if "frozen" in m)
    assert f"{sum(before[k].numel() for k in frozen)} frozen ({len(frozen)} tensors" in line
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    trained = [k for k in before if k.startswith(("representation.interactions.1.", "energy_head."))]
    assert all(not torch.equal(before[k], after[k]) for k in trained)
    # the original head started as the packaged head and has trained on the replayed data
    assert not torch.equal(after["energy_heads.original.readout.net.0.weight"], before["energy_head.net.0.weight"])

    class Crash(RuntimeError):
        pass

    def crash(epoch, step):
        if epoch == 1 and step == 2:
            raise Crash("killed in epoch 2")

    broken = run_config(tmp_path / "broken", original, **extra)
    with pytest.raises(Crash):
        train(broken, on_step=crash, log=quiet)
    train(str(tmp_path / "broken"), resume=True, log=quiet)
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "broken" / "checkpoints" / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 3
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-10, atol=1e-12)


def test_new_element_rows_are_added_and_trained(pretrained, tmp_path):
    root, original, model_path = pretrained
    new = tmp_path / "with_n.xyz"
    ase.io.write(new, labelled("H3CNH2", 12, seed=50) + make_frames(4, seed=70))
    config = run_config(tmp_path / "ft", new, epochs=4, finetune={"init_from": model_path})
    trainer = setup_trainer(config)
    model = trainer.model
    assert [int(z) for z in model.species] == [1, 6, 8, 7]  # the packaged order, then N
    base = load(model_path, dtype=torch.float64)
    ethanol = graphs_of(original)[:4]
    for got, want in zip(predictions(model, ethanol), predictions(base, ethanol)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    rows = model.representation.embedding.weight.detach().clone()
    torch.testing.assert_close(rows[:3], base.representation.embedding.weight.detach(), rtol=0, atol=0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:  # a fresh model as the trainer builds it
        torch.manual_seed(config["seed"])
        fresh = build_model(trainer.model_config).representation.embedding.weight.detach()
    finally:
        torch.set_default_dtype(previous)
    torch.testing.assert_close(rows[3], fresh[3].to(rows.dtype), rtol=0, atol=0)  # as a new model starts
    assert np.isfinite(float(model.atomic_energies[3])) and float(model.atomic_energies[3]) != 0.0

    amines = graphs_of(new)[:12]
    before = evaluate(model, amines).metrics["all"]["forces_mae"]
    result = train(config, log=quiet)
    after_model = load(result["model_path"], dtype=torch.float64)
    after = evaluate(after_model, amines).metrics["all"]["forces_mae"]
    assert not torch.equal(after_model.representation.embedding.weight[3].detach(), rows[3])
    assert after < 0.8 * before, (before, after)


def test_reference_energies_kept_or_refitted(pretrained, tmp_path):
    root, original, model_path = pretrained
    amines = tmp_path / "amines.xyz"  # H, C and N: no O
    ase.io.write(amines, labelled("H3CNH2", 8, seed=20, shift=0.5))
    base = load(model_path).atomic_energies.tolist()
    kept = setup_trainer(run_config(tmp_path / "keep", amines, finetune={"init_from": model_path}))
    assert kept.model_config["atomic_energies"][:3] == base and kept.model_config["scale"] == load(model_path).config["scale"]
    refit = setup_trainer(run_config(tmp_path / "fit", amines, model={"atomic_energies": "fit", "scale": 2.0},
                                     finetune={"init_from": model_path}))
    e0 = refit.model_config["atomic_energies"]
    assert e0[2] == base[2]  # O is not in the new data: its packaged value
    assert e0[0] != base[0] and e0[1] != base[1] and refit.model_config["scale"] == 2.0


@pytest.mark.parametrize("family, hyper", [("nequip", {"num_layers": 1, "channels": 4, "lmax": 1}),
                                           ("allegro", {"num_layers": 1, "latent_dim": 8, "two_body_hidden": 8,
                                                        "latent_hidden": 8, "num_tensor_features": 2})])
def test_grow_species_keeps_known_elements_features(family, hyper):
    # nequip's self-connection and allegro's one-hot MLP normalise by the number of elements
    torch.manual_seed(0)
    old = build_model({"name": family, "species": ["H", "C"], "cutoff": 3.0, **hyper}).double()
    new = build_model({"name": family, "species": ["H", "C", "N"], "cutoff": 3.0, **hyper}).double()
    state = old.representation.state_dict()
    grown = grow_species(old.representation, new.representation, state, cutoff=3.0, family=family)
    assert grown
    carried = {k: v for k, v in old.state_dict().items() if v.shape == new.state_dict()[k].shape}
    new.load_state_dict({**new.state_dict(), **carried, **{f"representation.{k}": v for k, v in grown.items()}})
    frames = [molecule("CH4"), molecule("C2H6")]
    for atoms in frames:
        atoms.rattle(0.05, seed=1)
    graph = batch_graphs([AtomicGraph.from_tensors(torch.tensor(a.positions), torch.tensor(a.numbers), 3.0)
                          for a in frames]).to(dtype=torch.float64)
    old.atomic_energies.zero_()
    new.atomic_energies.zero_()
    e_old, f_old = predictions(old, [graph])
    e_new, f_new = predictions(new, [graph])
    torch.testing.assert_close(e_new, e_old, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(f_new, f_old, rtol=1e-9, atol=1e-9)


def test_incompatible_models_and_keys_are_errors(pretrained, tmp_path):
    root, original, model_path = pretrained
    package = read_base(model_path)

    def merge_error(**model):
        config = load_config(None, base=run_config(tmp_path / "e", original, model=model,
                                                    finetune={"init_from": model_path}))
        with pytest.raises(ConfigError) as info:
            merge_config(config, package)
        return str(info.value)

    msg = merge_error(name="painn")
    assert "model.name" in msg and "'painn'" in msg and "'schnet'" in msg
    msg = merge_error(cutoff=4.0)
    assert "model.cutoff" in msg and "4 Å" in msg and "3 Å" in msg
    msg = merge_error(name="schnet", channels=16)
    assert "model.channels: 16" in msg and "packaged model's 8" in msg
    assert "representation.embedding.weight [3, 8] -> [3, 16]" in msg
    msg = merge_error(name="schnet", num_layers=3)
    assert "model.num_layers: 3" in msg and "(new)" in msg
    msg = merge_error(channelz=3)  # no model.name: checked against the packaged model's family
    assert "unknown key(s) ['channelz'] for model 'schnet'" in msg
    # a hyperparameter that changes no weight's shape may change; keys left out are the packaged model's
    merged = merge_config(load_config(None, base=run_config(tmp_path / "ok", original, model={"avg_num_neighbors": 7.5},
                                                            finetune={"init_from": model_path})), package)
    assert merged.model.avg_num_neighbors == 7.5 and merged.model.name == "schnet" and merged.model.cutoff == CUTOFF
    with pytest.raises(ConfigError) as info:
        freeze(load(model_path), ["representation.layers.0"])
    msg = str(info.value)
    assert "finetune.freeze" in msg and "'representation.layers.0'" in msg and "representation.interactions.0" in msg

    text = tmp_path / "not_a_model.pt"
    text.write_text("hello")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(open(model_path, "rb").read()[:2000])
    for path, words in ((text, "not a clebsch model"), (tmp_path / "missing.pt", "no model file"),
                        (root / "pre" / "checkpoints" / "last.pt", "training checkpoint"), (corrupt, "corrupt")):
        config = run_config(tmp_path / "e2", original, finetune={"init_from": str(path)})
        with pytest.raises(ConfigError, match="finetune.init_from") as info:
            setup_trainer(config)
        assert str(path) in str(info.value) and words in str(info.value)

    with pytest.raises(ConfigError, match="finetune.replay needs finetune.init_from"):
        load_config(None, base={"finetune": {"replay": {"data": "a.xyz"}}})
    with pytest.raises(ConfigError, match=r"finetune.replay.head: 'default' is not allowed; allowed values"):
        load_config(None, base={"finetune": {"init_from": "m.pt", "replay": {"data": "a.xyz", "head": "default"}}})
    with pytest.raises(ConfigError, match=r"finetune.replay.fraction"):
        load_config(None, base={"finetune": {"init_from": "m.pt", "replay": {"data": "a.xyz", "fraction": 1.0}}})
    with pytest.raises(ConfigError, match=r"finetune.replay.ratio: unknown key; allowed keys: data, fraction"):
        load_config(None, base={"finetune": {"init_from": "m.pt", "replay": {"data": "a.xyz", "ratio": 0.1}}})
    with pytest.raises(PackageError, match="no energy head 'other'; its heads: default"):
        load(model_path, head="other")


def test_replay_keeps_the_original_task_while_the_new_one_improves(pretrained, tmp_path):
    """Fine-tuning on a perturbed potential (forces x1.3, energies x1.3 + 0.1 eV/atom) with replay.

    Stated bound: the original head's force MAE on held-out original data stays within 20% of the
    packaged model's, while the new head's force MAE on held-out new data drops by at least 25%.
    """
    root, original, model_path = pretrained
    new, new_test, original_test = tmp_path / "new.xyz", tmp_path / "new_test.xyz", tmp_path / "original_test.xyz"
    ase.io.write(new, labelled("CH3CH2OH", 20, seed=200, factor=1.3, shift=0.1))
    ase.io.write(new_test, labelled("CH3CH2OH", 6, seed=300, factor=1.3, shift=0.1))
    ase.io.write(original_test, make_frames(6, seed=400))
    config = run_config(tmp_path / "ft", new, epochs=6,
                        finetune={"init_from": model_path, "replay": {"data": str(original), "fraction": 0.5}})
    result = train(config, log=quiet)
    assert "forces_mae" in result["replay_metrics"]["all"]

    def forces_mae(path, data, head=None):
        return evaluate(load(path, dtype=torch.float64, head=head), graphs_of(data)).metrics["all"]["forces_mae"]

    new_before, new_after = forces_mae(model_path, new_test), forces_mae(result["model_path"], new_test)
    old_before = forces_mae(model_path, original_test)
    old_after = forces_mae(result["model_path"], original_test, head="original")
    assert new_after < 0.75 * new_before, (new_before, new_after)
    assert old_after < 1.2 * old_before, (old_before, old_after)
    # the heads differ: the default head has moved to the new task
    assert forces_mae(result["model_path"], original_test) > old_after


def test_cli_init_from(pretrained, tmp_path):
    from clebsch.cli import main

    root, original, model_path = pretrained
    config = run_config(tmp_path / "cli", original, epochs=1, finetune={"init_from": str(tmp_path / "elsewhere.pt")})
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "ft.yaml"), "--init-from", str(model_path)]) == 0  # the flag wins
    package = torch.load(tmp_path / "cli" / "model.pt", weights_only=True)
    assert package["metadata"]["init_from"] == str(model_path)
    assert package["config"]["name"] == "schnet" and package["config"]["channels"] == 8
    written = yaml.safe_load((tmp_path / "cli" / "config.yaml").read_text())
    assert written["finetune"]["init_from"] == str(model_path) and written["model"]["name"] == "schnet"
    assert main(["train", "--resume", str(tmp_path / "cli"), "--init-from", str(model_path)]) == 2
