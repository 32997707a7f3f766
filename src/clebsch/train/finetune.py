"""Fine-tuning: a run that starts from a packaged model instead of fresh weights.

``finetune.init_from: model.pt`` (or ``clebsch train CONFIG --init-from model.pt``)::

    finetune:
      init_from: runs/pretrain/model.pt
      freeze: [representation.embedding, representation.interactions.0]
      replay: {data: original.xyz, fraction: 0.2, head: original}

* **Same model.** The family, the cutoff (the radial functions are tied to it)
  and every hyperparameter that sets the shape of a weight are the packaged
  model's. Model keys the config leaves out take the packaged values; a config
  that names another value is an error naming the key and both values
  (:func:`merge_config`). Hyperparameters that change no shape
  (``avg_num_neighbors``, ...) may be changed.
* **New elements.** Elements of the new data that the packaged model does not
  know are appended to its species: the weights that belong to one element (an
  embedding row, a per-element linear map, a one-hot column) get the values a
  fresh model starts from, every other weight keeps its trained value, so the
  known elements' predictions are unchanged at step 0 (:func:`grow_species`).
* **Reference energies and scale.** ``model.atomic_energies: auto`` keeps the
  packaged model's values and fits only the new elements' (on what the kept ones
  leave unexplained, or from ``data.isolated_atoms``); ``fit`` refits every
  element; explicit values win. ``model.scale`` and ``model.avg_num_neighbors``
  stay the packaged model's unless set.
* **Freezing.** ``finetune.freeze`` lists parameters by name, name prefix or
  glob (names as in ``model.named_parameters()``); they get no gradient, no
  weight decay and no optimiser state, and keep their values bit for bit
  (:func:`freeze`).
* **Replay (multi-head).** ``finetune.replay`` keeps the packaged model's task:
  a copy of its energy head becomes a further *energy head* of the model
  (``model.energy_heads[name]``: a readout, reference energies and a scale, see
  :class:`EnergyHead`), trained on a share of every step drawn from the original
  data, while the new data trains the model's own (``"default"``) head; both go
  through the one representation. The packaged result predicts with the default
  head; ``clebsch.models.package.load(path, head="original")`` gives the model
  with the original head.
"""

from __future__ import annotations

import copy
import fnmatch
import math

import numpy as np
import torch
from ase.data import chemical_symbols

from .config import ConfigError, ModelSection, TrainConfig, _format_errors

__all__ = [
    "read_base",
    "merge_config",
    "finetune_model_config",
    "load_base_weights",
    "grow_species",
    "freeze",
    "EnergyHead",
    "add_energy_head",
    "forward_with_head",
    "HeadView",
    "replay_order",
    "ENERGY_TARGETS",
]

ENERGY_TARGETS = ("energy", "forces", "stress", "virial")
"""The targets an energy head trains (the energy and its derivatives); replayed structures train these only."""

_Z = {s: z for z, s in enumerate(chemical_symbols)}


# ------------------------------------------------------------------ the packaged model and the config


def read_base(path) -> dict:
    """The packaged model to start from (:func:`clebsch.models.package.read_package`), with its ``path``.

    Errors name the key and the file.
    """
    from ..models.package import PackageError, read_package

    try:
        package = read_package(path)
    except (FileNotFoundError, PackageError) as err:
        raise ConfigError(f"finetune.init_from: {err}") from None
    return {**package, "path": str(path)}


def _shapes(model_config: dict) -> dict:
    from ..models import build_model

    previous = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float32)
        return {k: tuple(v.shape) for k, v in build_model(model_config).state_dict().items()}
    finally:
        torch.set_default_dtype(previous)


def _shape_changes(base: dict, changed: dict, before: dict, path) -> dict[str, str]:
    """``{key: how its value changes the packaged model's weight shapes}`` for the keys of ``changed`` that do.

    ``before``: the packaged model's weight shapes, by name.
    """
    if not changed:
        return {}

    def build(config, keys):
        try:
            return _shapes(config)
        except (ValueError, TypeError) as err:
            where = ", ".join(f"model.{k}: {changed[k]!r}" for k in keys)
            raise ConfigError(f"{where} does not fit the packaged model {path} ({err})") from None

    if build({**base, **changed}, list(changed)) == before:  # the common case: one build says no key changes a shape
        return {}
    out = {}
    for key, value in changed.items():
        after = build({**base, key: value}, [key])
        how = [f"{k} {list(before[k])} -> {list(after[k])}" for k in before if k in after and before[k] != after[k]]
        how += [f"{k} (new)" for k in after if k not in before] + [f"{k} (gone)" for k in before if k not in after]
        if how:
            out[key] = "; ".join(how[:3]) + (f" and {len(how) - 3} more" if len(how) > 3 else "")
    return out


def _current_name(key: str) -> str:
    """A weight's name in today's models (older packages named some heads otherwise)."""
    from ..models._potential import _LEGACY_PREFIXES

    for old, new in _LEGACY_PREFIXES.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


_HEAD_DEFAULTS = {"readout_hidden": 16, "readout_channels": 4}
"""The heads' sizes a packaged model has when its config does not name them (older packages)."""


def merge_config(config: TrainConfig, package: dict) -> TrainConfig:
    """The config with its model section completed from the packaged model, checked against it.

    ``model.name`` and ``model.cutoff`` must be the packaged model's when given;
    a hyperparameter (or ``readout_hidden``, ``readout_channels``) given with another value than the
    packaged one is an error when it changes a weight's shape, and is used
    otherwise. Keys not given take the packaged values.

    Raises
    ------
    ConfigError
        Naming the key, the config's value and the packaged model's.
    """
    from ..models import hyperparameters

    path = config.finetune.init_from
    base = dict(package["config"])
    m = config.model
    given = m.model_fields_set
    family = base.get("name")
    if "name" in given and m.name != family:
        raise ConfigError(
            f"model.name: {m.name!r} differs from the packaged model's family {family!r} (finetune.init_from {path}); "
            f"fine-tuning continues a model of the same family: set model.name: {family} or leave it out"
        )
    cutoff = float(base["cutoff"])
    if "cutoff" in given and not math.isclose(float(m.cutoff), cutoff, rel_tol=1e-9, abs_tol=1e-12):
        raise ConfigError(
            f"model.cutoff: {m.cutoff:g} Å differs from the packaged model's cutoff {cutoff:g} Å (finetune.init_from "
            f"{path}); the model's radial functions are tied to its cutoff: set model.cutoff: {cutoff:g} or leave it "
            "out"
        )
    try:
        allowed = hyperparameters(family)
    except ValueError as err:
        raise ConfigError(f"finetune.init_from: {path} holds a model of family {family!r}, which this clebsch does "
                          f"not know ({err})") from None
    extra = m.hyperparameters()
    unknown = sorted(set(extra) - set(allowed))
    if unknown:
        names = sorted(set(allowed) | set(ModelSection.model_fields))
        raise ConfigError(f"model: unknown key(s) {unknown} for model {family!r} (the family of {path}); "
                          f"allowed keys: {', '.join(names)}")
    changed = {k: v for k, v in extra.items() if k != "avg_num_neighbors" and v != base.get(k, allowed.get(k))}
    for key, default in _HEAD_DEFAULTS.items():
        if key in given and getattr(m, key) != base.get(key, default):
            changed[key] = getattr(m, key)
    if "avg_num_neighbors" in allowed and m.avg_num_neighbors != "auto":
        changed["avg_num_neighbors"] = float(m.avg_num_neighbors)
    before = {_current_name(k): tuple(v.shape) for k, v in package["state_dict"].items()
              if not k.startswith("energy_heads.")}
    shapes = _shape_changes(base, changed, before, path)
    if shapes:
        packaged = {**allowed, **_HEAD_DEFAULTS, **base}
        lines = [f"model.{key}: {changed[key]!r} differs from the packaged model's "
                 f"{packaged.get(key)!r} and changes the shapes of its weights ({how})"
                 for key, how in shapes.items()]
        fix = ", ".join(f"model.{key}: {packaged.get(key)!r}" for key in shapes)
        raise ConfigError("; ".join(lines) + f" (finetune.init_from {path}); fine-tuning keeps every trained weight: "
                          f"set {fix} or leave {'them' if len(shapes) > 1 else 'it'} out")
    merged = {
        "name": family,
        "cutoff": cutoff,
        "species": m.species,
        "atomic_energies": m.atomic_energies,
        "scale": m.scale,
        "avg_num_neighbors": m.avg_num_neighbors,
        "outputs": m.outputs,
        "targets": m.targets if "targets" in given else base.get("targets") or {},
        **{key: getattr(m, key) if key in given else base.get(key, default) for key, default in _HEAD_DEFAULTS.items()},
        "physics": m.physics if "physics" in given else base.get("physics") or {},
        "conditioning": m.conditioning if "conditioning" in given else base.get("conditioning") or [],
        **{k: base[k] for k in allowed if k in base and k != "avg_num_neighbors"},
        **{k: v for k, v in extra.items() if k != "avg_num_neighbors"},
    }
    tree = config.model_dump(mode="json")
    tree["model"] = merged
    try:
        return TrainConfig.model_validate(tree)
    except Exception as err:  # noqa: BLE001 - pydantic's ValidationError, re-worded
        from pydantic import ValidationError

        if isinstance(err, ValidationError):
            raise ConfigError(f"with the packaged model {path}: " + _format_errors(err)) from None
        raise


def _new_symbols(config: TrainConfig, data, old: list[str]) -> list[str]:
    from .data import species_of

    m = config.model
    wanted = species_of(data.train) if m.species == "auto" else list(m.species)
    for s in wanted:
        if s not in _Z or s == "X":
            raise ConfigError(f"model.species: {s!r} is not an element symbol")
    return sorted((s for s in wanted if s not in old), key=_Z.get)


def _fit_new_energies(graphs, old: dict[int, float], new: list[int]) -> list[float]:
    """Least-squares reference energies of the ``new`` elements, the ``old`` ones held at their values."""
    rows, rhs = [], []
    for g in graphs:
        e = g.targets.get("energy")
        if e is None or not bool(torch.isfinite(e).all()):
            continue
        counts = torch.bincount(g.numbers, minlength=119).tolist()
        rhs.append(float(e.reshape(-1)[0]) - sum(old.get(z, 0.0) * counts[z] for z in range(119) if counts[z]))
        rows.append([counts[z] for z in new])
    if not rows:
        return [0.0] * len(new)
    solution = np.linalg.lstsq(np.asarray(rows, dtype=float), np.asarray(rhs, dtype=float), rcond=None)[0]
    return [float(v) for v in solution]


def packaged_energies(package: dict) -> list[float]:
    """The packaged model's reference energies, in its species order (zeros where its config has none)."""
    e0 = package["config"].get("atomic_energies")
    return [float(e) for e in e0] if e0 is not None else [0.0] * len(package["species"])


def finetune_model_config(config: TrainConfig, data, package: dict) -> dict:
    """The model config of a fine-tuning run: the packaged model's, with new elements and the config's choices.

    Species are the packaged model's (in its order) followed by the new data's
    elements it does not know (by atomic number). Reference energies, scale,
    average neighbour count and outputs follow the rules of the module docstring.
    """
    from .data import isolated_atom_energies
    from .trainer import resolve_model_config

    base = package["config"]
    m = config.model
    old = [chemical_symbols[int(z)] for z in package["species"]]
    added = _new_symbols(config, data, old)
    species = old + added
    keep_e0 = m.atomic_energies == "auto"
    update = {"species": species, "atomic_energies": "zero" if keep_e0 else m.atomic_energies}
    if m.scale == "auto":
        update["scale"] = float(base.get("scale", 1.0))
    if m.avg_num_neighbors == "auto" and "avg_num_neighbors" in base:
        update["avg_num_neighbors"] = float(base["avg_num_neighbors"])
    section = m.model_copy(update=update)
    model_config = resolve_model_config(config.model_copy(update={"model": section}), data)
    old_e0 = dict(zip((int(z) for z in package["species"]), packaged_energies(package)))
    if m.atomic_energies == "fit":  # elements absent from the new data keep their packaged values
        present = {int(z) for g in data.train for z in g.numbers.unique().tolist()}
        model_config["atomic_energies"] = [e if _Z[s] in present or _Z[s] not in old_e0 else old_e0[_Z[s]]
                                           for s, e in zip(species, model_config["atomic_energies"])]
    if keep_e0:
        new_z = [_Z[s] for s in added]
        if new_z and config.data.isolated_atoms:
            iso = isolated_atom_energies(config.data.isolated_atoms, config.data.keys, config.data.units)
            missing = [chemical_symbols[z] for z in new_z if z not in iso]
            if missing:
                raise ConfigError(f"data.isolated_atoms ({config.data.isolated_atoms}) has no energy for {missing}, "
                                  f"which the packaged model {config.finetune.init_from} does not know")
            fitted = [float(iso[z]) for z in new_z]
        else:
            fitted = _fit_new_energies(data.train, old_e0, new_z)
        model_config["atomic_energies"] = [old_e0[_Z[s]] for s in old] + fitted
    if m.outputs == "auto":
        outputs = list(base.get("outputs") or [])
        model_config["outputs"] = outputs + [o for o in model_config["outputs"] if o not in outputs]
    return model_config


# ------------------------------------------------------------------ weights


def load_base_weights(model, package: dict, log=None) -> dict:
    """Copy the packaged model's weights into ``model`` (built from :func:`finetune_model_config`).

    Weights of the same shape are copied; those that grow with the number of
    elements keep the known elements' values (:func:`grow_species`); the new
    config's reference energies and scale are kept; weights the packaged model
    lacks (a new output's head) keep their fresh values. Returns
    ``{"fresh": [...], "dropped": [...], "added_species": [...]}``.
    """
    from ..models.package import model_from_package

    path = package.get("path", "the packaged model")
    old_model = model_from_package(package, path, dtype=torch.float64)
    old_state = old_model.state_dict()
    new_state = model.state_dict()
    n_old, n_new = len(old_model.species), len(model.species)
    if list(model.species[:n_old]) != list(old_model.species):
        raise ConfigError(f"model.species must start with the packaged model's elements in its order "
                          f"{[chemical_symbols[z] for z in old_model.species]} (finetune.init_from {path})")
    grown = {}
    if n_new > n_old:
        rep_old = {k.removeprefix("representation."): v for k, v in old_state.items()
                   if k.startswith("representation.")}
        grown = grow_species(old_model.representation, model.representation, rep_old, cutoff=model.cutoff,
                             family=model.config.get("name", "?"), num_species=(n_old, n_new))
        grown = {f"representation.{k}": v for k, v in grown.items()}
    result, fresh = {}, []
    for key, value in new_state.items():
        if key in ("atomic_energies", "scale") or key.startswith("energy_heads."):
            result[key] = value
        elif key not in old_state:
            result[key] = value
            fresh.append(key)
        elif old_state[key].shape == value.shape:
            result[key] = old_state[key].to(value.dtype)
        elif key in grown:
            result[key] = grown[key].to(value.dtype)
        elif value.dim() and old_state[key].dim() == value.dim() and old_state[key].shape[0] == n_old \
                and value.shape[0] == n_new and old_state[key].shape[1:] == value.shape[1:]:
            # a per-element table (reference values, masses, a head's per-element shift): known rows kept
            result[key] = torch.cat([old_state[key].to(value.dtype), value[n_old:]])
        else:
            raise ConfigError(
                f"finetune.init_from: weight {key} has shape {list(old_state[key].shape)} in {path} but "
                f"{list(value.shape)} in the model of this config; check the model keys against the packaged model's"
            )
    model.load_state_dict(result)
    dropped = [k for k in old_state if k not in new_state]
    added = [chemical_symbols[z] for z in model.species[n_old:]]
    if log is not None:
        log(f"fine-tuning from {path}: {len(result) - len(fresh)} weight tensors loaded"
            + (f", elements {added} added" if added else "")
            + (f", {len(fresh)} new ({', '.join(sorted({k.rsplit('.', 1)[0] for k in fresh})[:4])})" if fresh else "")
            + (f", {len(dropped)} not used ({', '.join(sorted({k.rsplit('.', 1)[0] for k in dropped})[:4])})"
               if dropped else ""))
    return {"fresh": fresh, "dropped": dropped, "added_species": added}


def _probe_graph(n_atoms: int, cutoff: float, generator: torch.Generator):
    """A small random structure: ``n_atoms`` atoms in a chain of steps of 0.3 to 0.6 cutoffs, at least a
    quarter cutoff apart, and every ordered pair closer than the cutoff as an edge."""
    positions = [torch.zeros(3, dtype=torch.float64)]
    for _ in range(1000 * n_atoms):
        if len(positions) == n_atoms:
            break
        step = torch.randn(3, generator=generator, dtype=torch.float64)
        length = cutoff * (0.3 + 0.3 * float(torch.rand(1, generator=generator)))
        candidate = positions[-1] + step / step.norm() * length
        if all(float((candidate - p).norm()) >= 0.25 * cutoff for p in positions):
            positions.append(candidate)
    positions = torch.stack(positions)
    index = torch.arange(n_atoms)
    edge_index = torch.stack(torch.meshgrid(index, index, indexing="ij")).reshape(2, -1)
    edge_index = edge_index[:, edge_index[0] != edge_index[1]]
    distance = (positions[edge_index[0]] - positions[edge_index[1]]).norm(dim=-1)
    return positions, edge_index[:, distance < cutoff]


def _run(representation, species, positions, edge_index):
    return _run_with(representation, {}, species, positions, edge_index)


def _element_roles(representation, num_species: int, names: list[str], cutoff: float) -> dict[str, torch.Tensor]:
    """For each named parameter, the role of each entry: the element it belongs to, -1 shared, -2 unused.

    An entry belongs to element ``s`` when, with every weight perturbed at
    random, the features of structures made of ``s`` alone depend on it and
    those of every other element do not.
    """
    probe = copy.deepcopy(representation).to(torch.float64).eval()
    if hasattr(probe, "scalars_only"):  # every feature, not only those an energy-only model reads
        probe.scalars_only = False
    generator = torch.Generator().manual_seed(12345)
    with torch.no_grad():
        for p in probe.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    params = dict(probe.named_parameters())
    used = {n: torch.zeros(num_species, *params[n].shape, dtype=torch.bool) for n in names}
    for s in range(num_species):
        for n_atoms in (3, 4):
            positions, edge_index = _probe_graph(n_atoms, cutoff, generator)
            species = torch.full((positions.shape[0],), s, dtype=torch.long)
            out = _run(probe, species, positions, edge_index)
            weights = torch.randn(out.shape, generator=generator, dtype=out.dtype)
            grads = torch.autograd.grad((out * weights).sum(), [params[n] for n in names], allow_unused=True)
            for n, g in zip(names, grads):
                if g is not None:
                    used[n][s] |= (g != 0) & torch.isfinite(g)
    roles = {}
    for n, u in used.items():
        count = u.sum(dim=0)
        role = torch.where(count > 1, -1, torch.where(count == 0, -2, u.to(torch.int8).argmax(dim=0)))
        roles[n] = role.reshape(-1)
    return roles


def grow_species(old, new, old_state: dict, cutoff: float, family: str = "?",
                 num_species: tuple[int, int] | None = None) -> dict:
    """Values for ``new``'s weights whose shape grows with the number of elements.

    ``old`` and ``new`` are representations of one family for ``S`` and ``S' > S``
    elements (``num_species``; default: their ``num_species`` attribute or first
    embedding), the first ``S`` the same; ``old_state`` holds ``old``'s trained
    weights. Each entry of a grown weight is found to belong to one element or
    to be shared (:func:`_element_roles`, whatever the family's layout: rows of
    an embedding, blocks of a per-element linear map, columns for a one-hot
    input); known elements' and shared entries take the trained values, in
    order, and the new elements' keep ``new``'s fresh values. A family that
    normalises such a weight by its size (``1/sqrt(fan_in)`` of a one-hot input)
    sees the carried-over entries scaled back by one factor per weight, fitted
    so that ``new`` gives ``old``'s features on structures of known elements;
    the result is then checked on other structures.

    Raises
    ------
    ConfigError
        When a weight does not split by element (the family cannot grow).
    """
    n_old, n_new = num_species or (_num_species(old), _num_species(new))
    new_params = dict(new.named_parameters())
    names = [n for n, p in new_params.items() if n in old_state and old_state[n].shape != p.shape]
    if not names:
        return {}
    old_roles = _element_roles(old, n_old, names, cutoff)
    new_roles = _element_roles(new, n_new, names, cutoff)
    mapped, carried = {}, {}
    for n in names:
        value = new_params[n].detach().clone().to(torch.float64).reshape(-1)
        source = old_state[n].detach().reshape(-1).to(torch.float64)
        mask = torch.zeros_like(value, dtype=torch.bool)
        for role in (-2, -1, *range(n_old)):
            src = (old_roles[n] == role).nonzero().reshape(-1)
            dst = (new_roles[n] == role).nonzero().reshape(-1)
            if src.numel() != dst.numel():
                what = {-2: "unused", -1: "shared"}.get(role, f"element {role}'s")
                raise ConfigError(
                    f"cannot add elements to a {family!r} model: its weight representation.{n} does not split by "
                    f"element ({src.numel()} {what} entries for {n_old} elements, {dst.numel()} for {n_new}); "
                    f"fine-tune on data of the packaged model's elements, or train a new model"
                )
            value[dst] = source[src]
            mask[dst] = True
        mapped[n] = value.reshape(new_params[n].shape)
        carried[n] = mask.reshape(new_params[n].shape)
    a = _copy_with(old, old_state)
    b = _copy_with(new, {**{k: v for k, v in old_state.items() if k not in mapped}, **mapped})
    factors = _fit_factors(a, b, mapped, carried, n_old, cutoff)
    grown = {n: torch.where(carried[n], mapped[n] * f, mapped[n]) for n, f in zip(names, factors.tolist())}
    b.load_state_dict({**b.state_dict(), **grown})
    generator = torch.Generator().manual_seed(54321)
    with torch.no_grad():
        for n_atoms in (5, 7):
            graph = _probe_graph(n_atoms, cutoff, generator)
            species = torch.randint(0, n_old, (graph[0].shape[0],), generator=generator)
            fa, fb = _run(a, species, *graph), _run(b, species, *graph)
            if not torch.allclose(fa, fb, rtol=1e-7, atol=1e-9 * (1.0 + float(fa.abs().max()))):
                raise ConfigError(
                    f"cannot add elements to a {family!r} model: with the known elements' weights carried over, its "
                    f"features on known elements change (largest difference {float((fa - fb).abs().max()):.3g}); "
                    f"fine-tune on data of the packaged model's elements, or train a new model"
                )
    return {n: v.to(new_params[n].dtype) for n, v in grown.items()}


def _copy_with(representation, state: dict):
    """A float64 copy in eval mode holding ``state`` (entries whose shape does not fit keep the copy's values)."""
    module = copy.deepcopy(representation).to(torch.float64).eval()
    own = module.state_dict()
    own.update({k: v.to(own[k].dtype) for k, v in state.items() if k in own and v.shape == own[k].shape})
    module.load_state_dict(own)
    return module


def _fit_factors(a, b, mapped: dict, carried: dict, n_old: int, cutoff: float) -> torch.Tensor:
    """One factor per grown weight, on its carried-over entries, so that ``b`` matches ``a`` (Gauss-Newton).

    The factors are 1 unless the family normalises a weight by its number of
    entries; finite differences give the Jacobian, the residual is exact.
    """
    generator = torch.Generator().manual_seed(2024)
    graphs = []
    for n_atoms in (4, 6, 8):
        graph = _probe_graph(n_atoms, cutoff, generator)
        graphs.append((torch.randint(0, n_old, (graph[0].shape[0],), generator=generator), *graph))
    names = list(mapped)
    with torch.no_grad():
        target = torch.cat([_run(a, *g).reshape(-1) for g in graphs])

        def residual(factors):
            weights = {n: torch.where(carried[n], mapped[n] * f, mapped[n]) for n, f in zip(names, factors)}
            out = [_run_with(b, weights, *g) for g in graphs]
            return torch.cat([o.reshape(-1) for o in out]) - target

        factors = torch.ones(len(names), dtype=torch.float64)
        r = residual(factors)
        cost = float(r.square().sum())
        tol = 1e-12 * (1.0 + float(target.abs().max()))
        damping = 1e-6
        for _ in range(40):  # Levenberg-Marquardt: steps that lower the residual, damped until they do
            if float(r.abs().max()) <= tol:
                break
            h = 1e-6
            jac = torch.stack([(residual(factors + h * e) - residual(factors - h * e)) / (2 * h)
                               for e in torch.eye(len(names), dtype=torch.float64)], dim=1)
            jtj, jtr = jac.T @ jac, jac.T @ r
            while damping < 1e12:
                step = torch.linalg.solve(jtj + damping * torch.diag(torch.diag(jtj).clamp(min=1e-30)), -jtr)
                trial = factors + step
                r_trial = residual(trial)
                trial_cost = float(r_trial.square().sum())
                if trial_cost < cost:
                    factors, r, cost = trial, r_trial, trial_cost
                    damping = max(damping / 10, 1e-12)
                    break
                damping *= 10
            else:
                break
    return factors


def _run_with(module, weights: dict, species, positions, edge_index):
    if getattr(module, "topological", False):
        args = (species, edge_index, torch.zeros_like(species))
    else:
        args = (species, edge_index, positions[edge_index[0]] - positions[edge_index[1]])
    return torch.func.functional_call(module, weights, args)


def _num_species(representation) -> int:
    n = getattr(representation, "num_species", None)
    if n is None:
        for module in representation.modules():
            if isinstance(module, torch.nn.Embedding):
                return module.num_embeddings
        raise ConfigError(f"cannot tell how many elements {type(representation).__name__} knows")
    return int(n)


# ------------------------------------------------------------------ freezing


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".*")


def freeze(model: torch.nn.Module, patterns) -> list[str]:
    """Stop the parameters matching ``patterns`` from training; returns their names.

    A pattern is a parameter name, a prefix of names ending at a dot
    (``representation.layers.0``) or a glob (``representation.*.radial*``).

    Raises
    ------
    ConfigError
        A pattern matches no parameter (the message lists some real names).

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    >>> freeze(net, ["0"])
    ['0.weight', '0.bias']
    >>> freeze(net, ["2"])
    Traceback (most recent call last):
    ...
    clebsch.train.config.ConfigError: finetune.freeze: '2' matches no parameter; parameters: 0.weight, 0.bias, ...
    """
    names = [n for n, _ in model.named_parameters()]
    frozen = []
    for pattern in patterns:
        hits = [n for n in names if _matches(n, pattern)]
        if not hits:
            prefixes = list(dict.fromkeys(n.rsplit(".", 1)[0] for n in names))
            shown = names if len(names) <= 8 else [f"{p}.*" for p in prefixes[:10]]
            more = f" (and {len(prefixes) - 10} more modules)" if len(names) > 8 and len(prefixes) > 10 else ""
            raise ConfigError(f"finetune.freeze: {pattern!r} matches no parameter; parameters: "
                              f"{', '.join(shown)}{more}")
        frozen += [n for n in hits if n not in frozen]
    params = dict(model.named_parameters())
    for n in frozen:
        params[n].requires_grad_(False)
    return [n for n in names if n in frozen]


# ------------------------------------------------------------------ energy heads


class EnergyHead(torch.nn.Module):
    """A further energy head of a :class:`~clebsch.models.Potential`: a readout, reference energies and a scale.

    It stands in for the model's own ``energy_head``, ``atomic_energies`` and
    ``scale`` (same shapes), so that ``E_i = E0[z_i] + scale * (f(h_i) - f(h_i^isolated))``
    is computed from the same representation with other weights
    (:func:`forward_with_head`). Heads live in ``model.energy_heads``; the state
    dict keys ``energy_heads.<name>.readout.*``, ``.atomic_energies`` and
    ``.scale`` are what :mod:`clebsch.models.package` stores and selects.
    """

    def __init__(self, readout: torch.nn.Module, atomic_energies: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.readout = copy.deepcopy(readout)
        self.register_buffer("atomic_energies", atomic_energies.detach().clone())
        self.register_buffer("scale", scale.detach().clone().reshape(()))


def add_energy_head(model, name: str, atomic_energies=None, scale=None) -> EnergyHead:
    """Give ``model`` a further energy head ``name``: a copy of its own readout, with these references and scale.

    Examples
    --------
    >>> from clebsch.models import build_model
    >>> model = build_model({"name": "schnet", "species": ["H"], "cutoff": 3.0, "num_layers": 1, "channels": 4})
    >>> head = add_energy_head(model, "original")
    >>> sorted(model.energy_heads), sorted(k for k in model.state_dict() if k.startswith("energy_heads."))[-2:]
    (['original'], ['energy_heads.original.readout.net.2.weight', 'energy_heads.original.scale'])
    """
    if name == "default":
        raise ValueError("'default' is the model's own energy head; give the further head another name")
    if not hasattr(model, "energy_heads"):
        model.energy_heads = torch.nn.ModuleDict()
    e0 = model.atomic_energies if atomic_energies is None else torch.as_tensor(atomic_energies)
    s = model.scale if scale is None else torch.as_tensor(scale)
    head = EnergyHead(model.energy_head, e0.to(model.atomic_energies), s.to(model.scale))
    model.energy_heads[name] = head
    return head


def _head_tensors(model, name: str) -> dict:
    heads = getattr(model, "energy_heads", None)
    if heads is None or name not in heads:
        known = ["default", *(heads or {})]
        raise ValueError(f"the model has no energy head {name!r}; its heads: {', '.join(known)}")
    head = heads[name]
    tensors = {f"energy_head.{k}": v for k, v in head.readout.named_parameters()}
    tensors.update({f"energy_head.{k}": v for k, v in head.readout.named_buffers()})
    tensors["atomic_energies"] = head.atomic_energies
    tensors["scale"] = head.scale
    return tensors


def forward_with_head(model, graph, head: str | None = None, **kwargs) -> dict:
    """``model(graph)`` through energy head ``head`` (None or ``"default"``: the model's own).

    Gradients reach the chosen head's weights and the shared representation;
    the model itself is not changed.
    """
    if head in (None, "default"):
        return model(graph, **kwargs)
    return torch.func.functional_call(model, _head_tensors(model, head), (graph,), kwargs)


class HeadView(torch.nn.Module):
    """The model seen through one of its energy heads, for code that calls ``model(graph)`` (e.g. evaluation)."""

    def __init__(self, model, head: str):
        super().__init__()
        _head_tensors(model, head)  # a clear error for an unknown head
        self.model = model
        self.head = head

    @property
    def targets(self):
        return self.model.targets

    @property
    def outputs(self):
        return self.model.outputs

    def forward(self, graph, **kwargs):
        return forward_with_head(self.model, graph, self.head, **kwargs)


# ------------------------------------------------------------------ replay


def replay_order(n: int, seed: int, epoch: int, size: int) -> np.ndarray:
    """``size`` indices into ``n`` replayed structures for an epoch: shuffled passes, a function of (seed, epoch).

    >>> replay_order(3, 0, 0, 7).tolist() == replay_order(3, 0, 0, 7).tolist()
    True
    >>> sorted(replay_order(3, 0, 1, 6).tolist())  # two whole passes
    [0, 0, 1, 1, 2, 2]
    """
    rng = np.random.default_rng([int(seed), int(epoch), 1])
    passes = [rng.permutation(n) for _ in range(max(1, math.ceil(size / max(n, 1))))]
    return np.concatenate(passes)[:size]


def replay_per_step(batch_size: int, fraction: float) -> int:
    """Replayed structures per step, so that they are ``fraction`` of the step's structures.

    >>> replay_per_step(4, 0.2), replay_per_step(4, 0.5)
    (1, 4)
    """
    return max(1, round(batch_size * fraction / (1.0 - fraction)))
