"""A compiled training step: the force graph made explicit, one backward through a fused graph.

Training on forces in eager mode differentiates twice: the forward pass, the
forces as ``autograd.grad(E, positions, create_graph=True)``, then the loss's
backward through both -- a double backward through thousands of small eager
operations, whose time on small molecules goes to dispatch and autograd
bookkeeping. :class:`CompiledForces` removes it:

1. **Capture.** The function

       (positions, species, edge_index, shifts, cell, batch, graphs)
           -> (energy [B], atomic energies [N], forces [N, 3][, virial [B, 3, 3]])

   -- the model's energy path followed by the gradient with respect to the
   positions (and the strain) -- is traced once with ``make_fx`` into one
   ATen graph in which the forces are plain forward operations. The weights
   stay the model's own parameters (the graph refers to them, it does not
   copy them), so the optimiser's updates are seen by the next call. Sizes
   (atoms, edges, structures) are symbolic: one graph serves every batch.
2. **Compile.** TorchInductor compiles that graph with ``dynamic=True``;
   AOTAutograd derives its backward with respect to the weights, so the
   loss's backward is a single compiled backward instead of an eager double
   backward.
3. **Check.** The first call of every newly compiled graph is compared with
   the eager model on the same batch (values and the weights' gradient of a
   probe loss); a disagreement, an error while tracing or compiling, or a
   model whose energy path cannot be traced turns the compiled path off with
   one :class:`RuntimeWarning` saying why, and training continues eagerly.

Only the energy path is compiled: models with extra heads in the loss
(dipoles, charges, declared targets), a charge- or spin-conditioned model, a
Coulomb or D3 term, topological families, and fine-tuning with a replay head
train eagerly (:func:`compile_unsupported` says why).
"""

from __future__ import annotations

import time
import warnings

import torch

__all__ = ["CompiledForces", "compile_unsupported"]

# how far the compiled result may be from eager on its first batch before the compiled path is refused
_CHECK_RTOL = {torch.float32: 2e-3, torch.float64: 1e-7}

ENERGY_KEYS = {"energy", "energy_per_atom", "atomic_energies", "forces", "stress", "virial"}


def compile_unsupported(model, loss_targets, replay: bool = False) -> str | None:
    """Why ``model`` cannot train through :class:`CompiledForces` with a loss on ``loss_targets``; None if it can."""
    from ..models import Potential

    if not isinstance(model, Potential):
        return f"only a clebsch Potential can be compiled, not {type(model).__name__}"
    if getattr(model, "topological", False):
        return "a topological family has no forces to compile"
    if model.conditioning:
        return "a charge- or spin-conditioned model is trained eagerly"
    physics = getattr(model, "physics", None)
    if physics is not None and physics.needs_positions:
        return "a model with a coulomb or d3 physics term is trained eagerly"
    others = sorted(set(loss_targets) - ENERGY_KEYS)
    if others:
        return f"the loss has targets beyond energy, forces and stress ({', '.join(others)})"
    if replay:
        return "fine-tuning with a replay head is trained eagerly"
    return None


def _without_detach(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Remove the graph's ``detach`` nodes, so that it can be differentiated again.

    While ``make_fx`` records the backward pass, autograd detaches the tensors
    it saves for the backward formulas (a sigmoid's output, for instance) and
    the trace records those detaches; the graph computes the right forces but
    differentiating it would miss every path through a saved tensor. In the
    energy path a detach has no effect on the values, so every one is removed;
    the first call's check against eager guards the rest.
    """
    aten = torch.ops.aten
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in (aten.detach.default, aten.alias.default):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return gm


def _no_duck_shapes():
    from torch.fx.experimental import _config as fx_config

    return fx_config.patch(use_duck_shape=False)


class CompiledForces:
    """Energy, forces and virial of a batch from one compiled graph that training can differentiate.

    Parameters
    ----------
    model : Potential
        The model being trained (its parameters are used in place).
    backend : str or None
        ``torch.compile``'s backend: ``"inductor"`` (the default, generated code),
        ``"aot_eager"`` (the same forward and backward graphs, run by PyTorch's
        own kernels), or ``None``: the captured graph run as it is, differentiated
        by autograd (no compilation; for tests and debugging).

    Call it on a batch like the model in training: ``compiled(graph,
    compute_stress=...)`` returns ``energy`` [B], ``atomic_energies`` [N],
    ``forces`` [N, 3] and, with ``compute_stress``, ``virial`` and ``stress``
    [B, 3, 3] -- or ``None`` when the compiled path is off (:attr:`failed` says
    why, and one warning has said so), in which case the caller evaluates the
    model eagerly.

    Attributes
    ----------
    failed : str or None
        Why the compiled path was turned off.
    compile_seconds : dict
        ``{compute_stress: seconds}`` the first call took: tracing, compiling and running.
    """

    def __init__(self, model, backend: str | None = "inductor"):
        self.model = model
        self.backend = backend
        self.failed: str | None = None
        self.compile_seconds: dict = {}
        self.trace_seconds: float | None = None
        self._graphs: dict = {}
        self._checked = -1  # Dynamo's count of compiled graphs after the last check against eager

    # ----------------------------------------------------------------- capture
    def _function(self, stress: bool):
        p = self.model

        def energy_forces(positions, species, edge_index, shifts, cell, batch, graphs):
            positions = positions.detach().requires_grad_(True)
            inputs = [positions]
            if stress:
                strain = torch.zeros_like(cell).requires_grad_(True)
                sym = 0.5 * (strain + strain.transpose(1, 2))
                strained = positions + torch.einsum("ni,nij->nj", positions, sym[batch])
                strained_cell = cell + torch.bmm(cell, sym)
                inputs.append(strain)
            else:
                strained, strained_cell = positions, cell
            sender, receiver = edge_index[0], edge_index[1]
            vectors = strained[sender] - strained[receiver]
            vectors = vectors + torch.einsum("ei,eij->ej", shifts, strained_cell[batch[receiver]])
            e_atom, _ = p.atomic_energies_and_features(species, edge_index, vectors)
            energy = torch.zeros_like(graphs, dtype=e_atom.dtype).index_add(0, batch, e_atom)
            grads = torch.autograd.grad(energy.sum(), inputs, create_graph=True, allow_unused=True)
            grads = [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads)]
            out = [energy, e_atom, -grads[0]]
            if stress:
                out.append(-grads[1])
            return tuple(out)

        return energy_forces

    def _example(self, dtype, device):
        """Inputs to trace with: distinct sizes above 1, so that none is specialised; values do not matter."""
        n, e, b = 7, 13, 3
        gen = torch.Generator().manual_seed(0)
        n_species = len(self.model.species)
        return (
            torch.randn(n, 3, generator=gen, dtype=dtype).to(device),
            (torch.arange(n) % n_species).to(device),
            torch.stack([torch.arange(e) % n, (torch.arange(e) + 1) % n]).to(device),
            torch.zeros(e, 3, dtype=dtype, device=device),
            (4.0 * torch.eye(3, dtype=dtype)).expand(b, 3, 3).contiguous().to(device),
            torch.tensor([0, 0, 0, 1, 1, 2, 2], device=device),
            torch.zeros(b, dtype=torch.long, device=device),
        )

    def _build(self, stress: bool, dtype, device):
        from ..calculators._compiled import capture

        start = time.perf_counter()
        traced = capture(self._function(stress), self._example(dtype, device))
        self.trace_seconds = time.perf_counter() - start
        if self.backend is None:
            return _without_detach(traced)
        return torch.compile(_without_detach(traced), backend=self.backend, dynamic=True)

    # ------------------------------------------------------------------- calls
    def _fail(self, why: str) -> None:
        self.failed = why
        self._graphs.clear()
        warnings.warn(f"training.compile: {why}; training eagerly instead", RuntimeWarning, stacklevel=3)

    def _inputs(self, graph):
        dtype = graph.positions.dtype
        species = self.model.species_index(graph.numbers, graph.batch)  # unknown elements raise here, as in eager
        cell = graph.cell.to(dtype)
        if graph.num_graphs == 1:
            # a batch of one structure gets an empty second one: a size of 1 would make Dynamo compile a
            # second graph for it (sizes 0 and 1 are specialised), minutes in the middle of an epoch
            cell = torch.cat([cell, torch.eye(3, dtype=dtype, device=cell.device)[None]])
        graphs = torch.zeros(cell.shape[0], dtype=torch.long, device=graph.positions.device)
        inputs = (graph.positions.detach(), species, graph.edge_index, graph.shifts.to(dtype), cell, graph.batch,
                  graphs)
        return tuple(t.clone(memory_format=torch.contiguous_format) for t in inputs)

    def __call__(self, graph, compute_stress: bool = False):
        if self.failed is not None:
            return None
        stress = bool(compute_stress)
        from ..calculators._compiled import _first_line, _graphs_compiled

        inputs = self._inputs(graph)  # outside the try: a user's error (an unknown element) raises as in eager
        count = _graphs_compiled()
        try:
            start = time.perf_counter()
            if stress not in self._graphs:
                self._graphs[stress] = self._build(stress, graph.positions.dtype, graph.positions.device)
            with _no_duck_shapes():  # Dynamo, too, would tie a batch of 3 structures to the 3 of xyz
                results = self._graphs[stress](*inputs)
        except Exception as err:  # tracing and Inductor raise many kinds
            self._fail(f"the model could not be compiled for training ({_first_line(err)})")
            return None
        out = self._named(graph, results, stress)
        if _graphs_compiled() != count or count != self._checked:
            self.compile_seconds.setdefault(stress, time.perf_counter() - start)
            why = self._disagreement(graph, out, stress)
            if why:
                self._fail(why)
                return None
            self._checked = _graphs_compiled()
        return out

    @staticmethod
    def _named(graph, results, stress: bool) -> dict:
        b = graph.num_graphs  # without the empty structure a batch of one was given (see _inputs)
        out = {"energy": results[0][:b], "atomic_energies": results[1], "forces": results[2]}
        if stress:
            virial = results[3][:b]
            volume = torch.linalg.det(graph.cell.to(virial.dtype)).abs()
            periodic = graph.pbc.any(dim=1)
            safe = torch.where(periodic, volume, torch.ones_like(volume))
            out["virial"] = virial
            out["stress"] = torch.where(periodic[:, None, None], -virial / safe[:, None, None], torch.zeros_like(virial))
        return out

    def _disagreement(self, graph, out: dict, stress: bool) -> str | None:
        """Why the compiled result on ``graph`` is not the eager one (values and weight gradients), or None."""
        params = [q for q in self.model.parameters() if q.requires_grad]
        ref = self.model(graph, compute_forces=True, compute_stress=stress, training=True)
        rtol = _CHECK_RTOL.get(graph.positions.dtype, 2e-3)
        keys = ["energy", "forces"] + (["virial"] if stress else [])
        for key in keys:
            a, b = out[key].detach(), ref[key].detach()
            if a.shape != b.shape:
                return f"the compiled {key} has shape {tuple(a.shape)}, eager {tuple(b.shape)}"
            scale = float(b.abs().max()) if b.numel() else 0.0
            if not torch.allclose(a, b, rtol=rtol, atol=rtol * max(scale, 1.0)):
                return f"the compiled {key} differs from eager by {float((a - b).abs().max()):.3g} on this batch"

        if not torch.is_grad_enabled():  # called for values only (validation, inference): nothing to differentiate
            return None

        def probe(o):
            return sum((o[k] * o[k].detach().sign()).sum() for k in keys)  # touches every output's gradient

        with _no_duck_shapes():
            again = self._named(graph, self._graphs[stress](*self._inputs(graph)), stress)  # a compiled backward runs once
        ga = torch.autograd.grad(probe(again), params, allow_unused=True)
        gb = torch.autograd.grad(probe(ref), params, allow_unused=True)
        ga = [torch.zeros_like(q) if a is None else a for q, a in zip(params, ga)]
        gb = [torch.zeros_like(q) if b is None else b for q, b in zip(params, gb)]
        # rounding is relative to the largest gradient (sums over atoms and edges), not to each tensor's own:
        # in float32 a weight with tiny gradients differs by ~1e-7 of the largest (a wrong path, by far more)
        scale = max((float(b.abs().max()) for b in gb if b.numel()), default=0.0)
        for q, a, b in zip(params, ga, gb):
            if not torch.allclose(a, b, rtol=rtol * 10, atol=rtol * 10 * max(scale, 1e-12)):
                return (f"the compiled weight gradients differ from eager by {float((a - b).abs().max()):.3g} "
                        f"(largest gradient {scale:.3g})")
        return None
