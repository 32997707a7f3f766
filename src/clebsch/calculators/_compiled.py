"""Energy, forces and stress of one structure as one captured and compiled graph.

In eager mode, an energy-and-forces call on a small molecule is a few thousand
small operations, forward and backward, and its time goes to Python dispatch
and autograd bookkeeping rather than arithmetic. :class:`CompiledPotential`
removes that overhead for inference (MD, relaxation):

1. **Capture.** The function

       (positions, numbers, edge_index, shifts, cell, total_charge, spin_multiplicity)
           -> (atomic energies, forces[, stress][, head outputs])

   -- the model's energy path (the one :func:`~clebsch.calculators.export`
   exports) followed by ``torch.autograd.grad`` -- is traced once with
   ``make_fx`` into a single ATen graph that holds the backward pass as plain
   operations. Sizes are symbolic, so the graph serves any number of atoms
   and edges. Tracing runs with the compiling flag set, so that the layers
   take their traceable paths (the spherical harmonics use their PyTorch
   formula rather than the C kernel, whose writes through a raw pointer
   would be invisible to the trace).
2. **Compile.** The graph is compiled by TorchInductor with ``dynamic=True``
   and run under ``torch.no_grad()`` (it already is the backward: there is
   nothing left to differentiate). The number of edges changes at every MD
   step (the Verlet list hands over the pairs within the cutoff), the
   compiled code does not. Inductor keeps compiled graphs in its on-disk
   cache, so a second process pays only the tracing and the cache lookup
   (seconds instead of a minute).
3. **Check.** The first call of each compiled graph is compared with the
   eager model on the same structure.

Anything that goes wrong -- no C++ compiler, an error in Inductor, a model
that does not trace, a first result that disagrees with eager -- turns the
compiled path off with one :class:`RuntimeWarning` saying why; the caller then
evaluates the model eagerly.
"""

from __future__ import annotations

import contextlib
import time
import warnings

import torch

__all__ = ["CompiledPotential"]

# how far the first compiled result may be from eager before the compiled path is refused
# (a check for gross errors; the tests hold the two to rounding)
_CHECK_RTOL = {torch.float32: 1e-3, torch.float64: 1e-7}


@contextlib.contextmanager
def _compiling():
    """Set ``torch.compiler.is_compiling()`` while ``make_fx`` traces, as ``torch.compile`` does.

    Layers with a native kernel or a value-dependent fast path (spherical
    harmonics, MACE's grouped symmetric contraction) consult it to take
    their traceable path.
    """
    session = getattr(torch.compiler, "_compile_session_context", None)
    if session is not None:
        with session():
            yield
        return
    old = torch.compiler._is_compiling_flag  # older torch: the same flag, set by hand
    torch.compiler._is_compiling_flag = True
    try:
        yield
    finally:
        torch.compiler._is_compiling_flag = old


def capture(fn, inputs) -> torch.fx.GraphModule:
    """``fn(*inputs)`` (autograd calls included) as one ATen graph with symbolic sizes (``make_fx``).

    Traced with the compiling flag set (layers take their traceable paths) and without duck
    shapes, so that no size is tied to another that happens to be equal in ``inputs``.
    """
    from torch.fx.experimental import _config as fx_config
    from torch.fx.experimental.proxy_tensor import make_fx

    with torch.enable_grad(), _compiling(), fx_config.patch(use_duck_shape=False):
        return make_fx(fn, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*inputs)


def _sum_into_single_rows(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Rewrite ``index_add`` into a tensor of one row (per-structure sums of one structure) as a plain sum.

    Every index into a dimension of size 1 is 0, so the scatter is ``target += source.sum(0)``.
    Inductor's vectorised CPU code for a scatter-add whose index it has simplified to
    the constant 0 fails to compile on more than one thread (torch 2.13), and a sum
    is the better kernel anyway.
    """
    aten = torch.ops.aten
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in (aten.index_add_.default, aten.index_add.default):
            continue
        target, dim, _, source = node.args[:4]
        alpha = node.args[4] if len(node.args) > 4 else node.kwargs.get("alpha", 1)
        val = target.meta.get("val") if isinstance(target, torch.fx.Node) else None
        if val is None or dim not in (0, -val.dim()) or not isinstance(val.shape[0], int) or val.shape[0] != 1:
            continue
        with graph.inserting_before(node):
            total = graph.call_function(aten.sum.dim_IntList, (source, [0], True))
            add = aten.add_.Tensor if node.target is aten.index_add_.default else aten.add.Tensor
            new = graph.call_function(add, (target, total), {"alpha": alpha} if alpha != 1 else {})
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    graph.lint()
    gm.recompile()
    return gm


def _has_coulomb(model) -> bool:
    physics = getattr(model, "physics", None)
    return physics is not None and physics.needs_positions  # coulomb, d3: terms beyond the edges


def _graphs_compiled() -> int:
    """How many graphs Dynamo has compiled in this process (a new one means a new shape was specialised)."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


class CompiledPotential:
    """A :class:`~clebsch.models.Potential`'s energy, forces and stress, captured and compiled.

    Parameters
    ----------
    model : Potential
        In eval mode, on its device and in its dtype (see :func:`load_model`).

    Call it like the model on one structure: ``compiled(graph,
    compute_stress=...)`` returns ``energy`` [1], ``atomic_energies``,
    ``forces`` and, with ``compute_stress``, ``stress`` [1, 3, 3], plus the
    model's head outputs (``charges``, ``dipole``, ...) -- or ``None`` when the
    compiled path is unavailable (:attr:`failed` says why, and one warning
    has said so), in which case the caller evaluates the model eagerly.

    Attributes
    ----------
    failed : str or None
        Why the compiled path was turned off.
    compile_seconds : dict
        ``{compute_stress: seconds}`` the first call took: tracing, compiling
        (or reading Inductor's cache) and running.
    trace_seconds : float or None
        The part of it spent capturing the graph with ``make_fx``.

    Notes
    -----
    The weights are constants of the compiled graph: changing the model's
    parameters afterwards does not change what the compiled path computes
    (make a new calculator). Every call whose shapes made Dynamo compile a
    new graph (Inductor specialises the code of structures of about a dozen
    atoms or fewer, for instance) is checked against the eager model.
    """

    def __init__(self, model):
        from ..models import Potential

        self.model = model
        self.failed: str | None = None
        self.compile_seconds: dict = {}
        self.trace_seconds: float | None = None
        self._graphs: dict = {}  # compute_stress -> compiled callable
        self._compiled_count = -1  # Dynamo's count of graphs compiled, after the last check against eager
        if not isinstance(model, Potential):
            self._fail(f"only a clebsch Potential can be compiled, not {type(model).__name__}")
            return
        from ._export import exported_outputs

        self.outputs = exported_outputs(model)  # the head outputs: charges, dipole, declared targets

    # ----------------------------------------------------------------- capture
    def _heads(self, features, species, positions, vectors, edge_index, batch, total_charge) -> list:
        """The head outputs named in :attr:`outputs`, as the model returns them."""
        from ..models import HeadContext

        p = self.model
        if not self.outputs:
            return []
        # ``batch`` is an input of the graph (zeros), not a constant: with a constant index
        # Inductor's vectorised CPU scatter-add fails to compile (torch 2.13)
        ctx = HeadContext(species=species, positions=positions, batch=batch, num_graphs=1, edge_index=edge_index,
                          edge_vectors=vectors, total_charge=total_charge, masses=p.masses.to(positions.dtype)[species],
                          cutoff=p.cutoff)
        named = {}
        for key, head in p.heads.items():
            named.update({key: head(features)} if key in p._legacy_irreps else head(features, ctx))
        return [named[n] for n in self.outputs]

    def _energy_and_gradients(self, stress: bool):
        """The function that is traced: atomic energies, forces[, stress], head outputs.

        The same numbers as :meth:`Potential.forward <clebsch.models.Potential.forward>` on one
        structure, without its checks on tensor values (done before the call, see :meth:`__call__`).
        """
        p = self.model

        def energy_forces(positions, numbers, edge_index, shifts, cell, total_charge, spin_multiplicity, batch):
            positions = positions.detach().requires_grad_(True)
            inputs = [positions]
            if stress:
                strain = torch.zeros(3, 3, dtype=positions.dtype, device=positions.device, requires_grad=True)
                sym = 0.5 * (strain + strain.T)
                strained, strained_cell = positions + positions @ sym, cell + cell @ sym
                inputs.append(strain)
            else:
                strained, strained_cell = positions, cell
            species = p.z_to_index[numbers]
            vectors = strained[edge_index[0]] - strained[edge_index[1]] + shifts @ strained_cell
            physics = {}
            if p.conditioning:  # the per-structure inputs (checked before the call, see __call__)
                physics = {"batch": batch, "num_graphs": 1, "total_charge": total_charge,
                           "spin_multiplicity": spin_multiplicity}
            if _has_coulomb(p):  # an open structure (see __call__): the Coulomb term's inputs
                physics.update({"positions": strained, "batch": batch, "num_graphs": 1, "total_charge": total_charge,
                                "cell": strained_cell[None], "periodic": [False]})
            energies, features = p.atomic_energies_and_features(species, edge_index, vectors, **physics)
            heads = self._heads(features, species, strained, vectors, edge_index, batch, total_charge)
            grads = torch.autograd.grad(energies.sum(), inputs, allow_unused=True)
            grads = [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads)]
            out = [energies, -grads[0]]
            if stress:
                out.append(grads[1] / torch.linalg.det(cell).abs())
            return (*out, *heads)

        return energy_forces

    def _example(self, dtype, device):
        """Inputs to trace with: their sizes become symbols, their values do not matter."""
        n, e = 7, 13  # distinct and > 1, so that no size is specialised
        species = list(self.model.species)
        gen = torch.Generator().manual_seed(0)
        return (
            torch.randn(n, 3, generator=gen, dtype=dtype).to(device),
            torch.tensor([species[k % len(species)] for k in range(n)], dtype=torch.long, device=device),
            torch.stack([torch.arange(e) % n, (torch.arange(e) + 1) % n]).to(device),
            torch.zeros(e, 3, dtype=dtype, device=device),
            (4.0 * torch.eye(3, dtype=dtype)).to(device),
            torch.zeros(1, dtype=dtype, device=device),
            torch.ones(1, dtype=dtype, device=device),
            torch.zeros(n, dtype=torch.long, device=device),
        )

    def _build(self, stress: bool, dtype, device):
        start = time.perf_counter()
        traced = capture(self._energy_and_gradients(stress), self._example(dtype, device))
        self.trace_seconds = time.perf_counter() - start
        return torch.compile(_sum_into_single_rows(traced), dynamic=True)

    # ------------------------------------------------------------------- calls
    def _fail(self, why: str) -> None:
        self.failed = why
        self._graphs.clear()
        warnings.warn(f"compile=True: {why}; evaluating the model eagerly instead", RuntimeWarning, stacklevel=4)

    @staticmethod
    def _inputs(graph, dtype):
        positions = graph.positions.detach().to(dtype)
        charge = getattr(graph, "total_charge", None)
        charge = torch.zeros(1, dtype=dtype, device=positions.device) if charge is None else charge.to(dtype).reshape(1)
        spin = getattr(graph, "spin_multiplicity", None)  # NaN (not given) only for a model not conditioned on spin
        spin = torch.ones(1, dtype=dtype, device=positions.device) if spin is None else spin.to(dtype).reshape(1)
        inputs = (positions, graph.numbers, graph.edge_index, graph.shifts.to(dtype), graph.cell[0].to(dtype), charge,
                  spin, graph.batch)
        # the layout the graph was compiled for (a Verlet list hands over a transposed edge_index; Inductor's
        # code for a non-contiguous index input with symbolic sizes wrote out of bounds, torch 2.13)
        return tuple(t.contiguous() for t in inputs)

    def __call__(self, graph, compute_stress: bool = False):
        if self.failed is not None:
            return None
        if graph.cell.shape[0] != 1:
            raise ValueError("the compiled path evaluates one structure at a time")
        # unknown elements, bad atomic numbers, a missing charge or spin raise here, as in eager, not in the graph
        self.model.species_index(graph.numbers)
        self.model.conditioning_inputs(graph)
        stress = bool(compute_stress)
        if _has_coulomb(self.model) and bool(graph.pbc.any()):
            # the Ewald sum picks its reciprocal vectors from the cell's values: not one graph for every cell
            self._fail("a model with a coulomb or d3 physics term is compiled for open structures only")
            return None
        dtype = graph.positions.dtype
        count = _graphs_compiled()
        try:
            start = time.perf_counter()
            if stress not in self._graphs:
                self._graphs[stress] = self._build(stress, dtype, graph.positions.device)
            with torch.no_grad():
                results = self._graphs[stress](*self._inputs(graph, dtype))
        except Exception as err:  # tracing and Inductor raise many kinds
            self._fail(f"the model could not be compiled ({_first_line(err)})")
            return None
        out = self._named(results, stress)
        if _graphs_compiled() != count or count != self._compiled_count:
            # a graph was (re)compiled for this call: hold its first result against eager
            self.compile_seconds.setdefault(stress, time.perf_counter() - start)
            why = self._disagreement(graph, out, stress)
            if why:
                self._fail(why)
                return None
            self._compiled_count = _graphs_compiled()
        return out

    def _named(self, results, stress: bool) -> dict:
        energies, forces = results[0], results[1]
        out = {"energy": energies.sum().reshape(1), "atomic_energies": energies, "forces": forces}
        rest = results[2:]
        if stress:
            out["stress"] = rest[0][None]
            rest = rest[1:]
        out.update(zip(self.outputs, rest))
        return out

    def _disagreement(self, graph, out: dict, stress: bool) -> str | None:
        """Why the compiled result of ``graph`` is not the eager one, or ``None`` if they agree."""
        with torch.no_grad():
            ref = self.model(graph, compute_forces=True, compute_stress=stress)
        rtol = _CHECK_RTOL.get(graph.positions.dtype, 1e-3)
        for key in ("energy", "forces", "stress", "dipole"):
            if key not in ref or key not in out:
                continue
            a, b = out[key].detach(), ref[key].detach()
            if a.shape != b.shape:
                return f"the compiled {key} has shape {tuple(a.shape)}, eager {tuple(b.shape)}"
            if not bool(torch.isfinite(b).all()):
                continue  # eager is not finite either: the calculator reports it
            scale = float(b.abs().max()) if b.numel() else 0.0
            if not torch.allclose(a, b, rtol=rtol, atol=rtol * max(scale, 1.0)):
                diff = float((a - b).abs().nan_to_num(float("inf")).max())
                return f"the compiled {key} differs from eager by {diff:.3g} on this structure"
        return None
