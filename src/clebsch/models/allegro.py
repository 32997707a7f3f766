r"""Allegro: strictly local equivariant features on pairs of atoms (Musaelian et al., Nat. Commun. 14, 579, 2023).

Allegro passes no messages between atoms. Every feature lives on an ordered
pair ``ij`` (an edge: receiver, or centre, ``i`` and neighbour ``j`` within the
cutoff ``r_c``), and every quantity of the pair ``ij`` is built from the
neighbours of the centre ``i`` only, so the energy of atom ``i`` depends only on
the atoms within one cutoff of ``i`` -- whatever the number of layers. This is
what lets the model scale: no receptive field grows with depth.

Each pair carries two tracks of features.

*Scalar track* ``x_ij`` (``latent_dim`` invariants). It starts from the
two-body MLP of the elements of both atoms and a Bessel expansion ``B`` of the
distance, times the polynomial envelope ``u`` (p = 6):

    x_ij^0 = u(r_ij) MLP_2b(onehot(Z_i) || onehot(Z_j) || B(r_ij)).

*Tensor track* ``V_ij`` (``num_tensor_features`` copies, the channels ``n``,
of each irrep up to ``lmax``). It starts from the spherical harmonics of the
pair, weighted per channel and degree by a linear map of the scalars:

    V_ij,n,l^0 = (W^0 x_ij^0)_{n,l} Y_l(r_ij).

Layer ``L = 1 .. num_layers`` then does

1. *environment* of the centre: the same kind of weighted harmonics summed over
   all neighbours ``k`` of ``i`` (``j`` included),

       Env_i,n,l = 1/sqrt(n_avg) sum_k (W^L x_ik^{L-1})_{n,l} Y_l(r_ik);

2. *tensor product* of the pair's tensor features with the environment,
   channel by channel (channel ``n`` of ``V_ij`` with channel ``n`` of
   ``Env_i``), over every path ``(l1, p1) x (l2, p2) -> (l, p)`` with
   ``l <= lmax`` (both parities when ``parity``); the paths that reach the same
   irrep are summed with learned weights, and a linear layer mixes the
   channels of each irrep:

       V_ij^L = Linear( sum_paths w_path (V_ij^{L-1} (x) Env_i)_path );

3. *latent MLP*: the scalar track reads the invariant (``0e``) part of the new
   tensor features, with a residual update

       x_ij^L = 1/sqrt(2) ( x_ij^{L-1} + u(r_ij) MLP_latent^L(x_ij^{L-1} || V_ij,0e^L) ).

Every term carries the envelope of its own pair (through ``x^0``, the weights
``W x``, and ``u`` in the update), so a pair leaving the cutoff, or a
neighbour ``k`` leaving the environment, changes nothing abruptly
(``n_avg`` is ``avg_num_neighbors``).

The paper reads a pair energy ``E_ij = MLP_edge(x_ij^L)`` and sums
``E_i = sum_j E_ij``. Here the representation returns, for each atom ``i``,
the sums over its pairs ``ij`` (``i`` the receiver) of the final scalars
``x_ij^L`` and of the final tensor features (``1o`` vectors, ``1e``, ``2e``
... tensors), divided by ``sqrt(n_avg)``; the
:class:`~clebsch.models.Potential`'s heads read them. With a linear energy
readout (``readout_hidden: 0``) the atomic energy is exactly a sum of pair
energies, as in the paper. An atom with no pair gets zero features.
"""

from __future__ import annotations

import math

import torch

from ..nn import BesselBasis, PolynomialCutoff, ScalarMLP
from ..nn._sparse import sparse_bilinear
from ..o3 import Irrep, Irreps, spherical_harmonics, wigner_3j
from ._registry import register

__all__ = ["Allegro"]


class EnvironmentEmbedding(torch.nn.Module):
    """Per-pair weights ``(W x_ij)_{n,l}`` times ``Y_l(r_ij)``: ``[E, latent] -> [E, n, sum(2l+1)]``."""

    def __init__(self, latent_dim: int, channels: int, lmax: int):
        super().__init__()
        self.channels, self.lmax = channels, lmax
        self.linear = ScalarMLP([latent_dim, channels * (lmax + 1)])
        # the degree l of each component of the harmonics 0..lmax
        self.register_buffer("_degree", torch.tensor([l for l in range(lmax + 1) for _ in range(2 * l + 1)]),
                             persistent=False)

    def forward(self, x: torch.Tensor, sh: torch.Tensor) -> torch.Tensor:
        w = self.linear(x).reshape(x.shape[0], self.channels, self.lmax + 1)
        return w.index_select(2, self._degree) * sh[:, None, :]


def tensor_irreps(irs) -> list:
    """Irreps of the tensor track in their fixed order: by degree, the harmonics' parity ``(-1)^l`` first."""
    return sorted(set(irs), key=lambda ir: (ir.l, ir.p != (-1) ** ir.l))


class EnvironmentProduct(torch.nn.Module):
    """The tensor track's update: channel-wise tensor product with the environment, paths summed, channels mixed.

    Tensor features are ``[E, n, D]`` (read as rows ``[E * n, D]`` of any layout,
    returned components first, ``[D_out, E, n]``): ``n`` channels, each holding every irrep
    of ``irs_in`` once (``D = sum(2l+1)``); the environment is ``[E, n, S]``, the
    harmonics' irreps ``0e, 1o, 2e, ...`` (``S = (lmax+1)^2``). Channel ``c`` of
    the output is

        z_c = sum_paths w_path C_path (V_c (x) Env_c),

    one learned weight per path ``(l1, p1) x (l2, p2) -> (l, p)``, shared by the
    channels (the Clebsch-Gordan blocks ``C_path`` in component normalisation,
    ``1/sqrt(paths)`` per output irrep). Only the non-zero coefficients, times
    their path's weight, are visited (:func:`clebsch.nn.sparse_bilinear`: no
    outer product ``[E, n, D * S]`` is formed where the C kernels run).
    Then a linear layer mixes the channels of each output irrep
    (``1/sqrt(n)``), one batched matmul over the output components.
    """

    def __init__(self, irs_in: list, lmax: int, allowed: set, channels: int):
        super().__init__()
        self.channels = channels
        self.irs_in = list(irs_in)
        sh = [Irrep(l, (-1) ** l) for l in range(lmax + 1)]
        paths = [(a, l2, ir) for a, ir1 in enumerate(self.irs_in) for l2, ir2 in enumerate(sh)
                 for ir in ir1 * ir2 if ir in allowed]
        self.irs_out = tensor_irreps(ir for _, _, ir in paths)
        start_in = [sum(ir.dim for ir in self.irs_in[:a]) for a in range(len(self.irs_in))]
        start_out = {ir: sum(o.dim for o in self.irs_out[:k]) for k, ir in enumerate(self.irs_out)}
        self.dim_in, self.dim_sh = sum(ir.dim for ir in self.irs_in), (lmax + 1) ** 2
        self.dim_out = sum(ir.dim for ir in self.irs_out)
        count = {ir: sum(1 for *_, o in paths if o == ir) for ir in self.irs_out}
        # the non-zero Clebsch-Gordan coefficients of every path: value, path, place in the [D, S, D_out] matrix
        values, path_of, place = [], [], []
        for k, (a, l2, ir) in enumerate(paths):
            l1, s1, so = self.irs_in[a].l, start_in[a], start_out[ir]
            c = wigner_3j(l1, l2, ir.l, dtype=torch.float64) * math.sqrt(ir.dim / count[ir])
            for i, j, m in c.nonzero().tolist():
                values.append(float(c[i, j, m]))
                path_of.append(k)
                place.append(((s1 + i) * self.dim_sh + l2 * l2 + j) * self.dim_out + so + m)
        self.register_buffer("_values", torch.tensor(values, dtype=torch.get_default_dtype()), persistent=False)
        self.register_buffer("_path_of", torch.tensor(path_of, dtype=torch.long), persistent=False)
        place = torch.tensor(place, dtype=torch.long)  # as (input, harmonic, output) component of each term
        self.register_buffer("_input_of", place // (self.dim_sh * self.dim_out), persistent=False)
        self.register_buffer("_harmonic_of", place // self.dim_out % self.dim_sh, persistent=False)
        self.register_buffer("_output_of", place % self.dim_out, persistent=False)
        self.register_buffer("_scalar_terms", torch.nonzero(self._output_of == 0)[:, 0], persistent=False)
        self.path_weights = torch.nn.Parameter(torch.randn(len(paths)))
        self.mix = torch.nn.Parameter(torch.randn(len(self.irs_out), channels, channels))
        self.register_buffer("_irrep_of", torch.tensor([k for k, ir in enumerate(self.irs_out) for _ in range(ir.dim)]),
                             persistent=False)

    def forward(self, v: torch.Tensor, env: torch.Tensor, scalars_only: bool = False) -> torch.Tensor:
        """``v`` ``[E * n, D]`` (any strides), ``env`` ``[E, n, S]`` -> the new features, components first ``[D_out, E, n]``.

        With ``scalars_only``, only the ``0e`` output: ``[1, E, n]``.
        """
        e, n = env.shape[0], self.channels
        coefficients = self._values.to(v.dtype) * self.path_weights.to(v.dtype).index_select(0, self._path_of)
        terms = (self._input_of, self._harmonic_of, self._output_of)
        irrep_of, dim_out = self._irrep_of, self.dim_out
        if scalars_only:  # the terms into the 0e component (the first)
            coefficients = coefficients.index_select(0, self._scalar_terms)
            terms = tuple(t.index_select(0, self._scalar_terms) for t in terms)
            irrep_of, dim_out = irrep_of[:1], 1
        z = sparse_bilinear(v, env.reshape(e * n, self.dim_sh), coefficients, terms, dim_out,
                            components_major=True)  # [E * n, D_out], a view of [D_out, E * n]
        # mix the channels: [D_out, E, n] @ [D_out, n, n]
        mix = self.mix.to(v.dtype).index_select(0, irrep_of) / math.sqrt(n)
        return torch.bmm(z.T.reshape(dim_out, e, n), mix)


class AllegroLayer(torch.nn.Module):
    """One Allegro layer: environment, tensor product with linear mix, latent MLP with residual."""

    def __init__(self, irs_in: list, allowed: set, channels: int, lmax: int, latent_dim: int,
                 latent_hidden: int, avg_num_neighbors: float, latent_resnet: bool):
        super().__init__()
        self.environment = EnvironmentEmbedding(latent_dim, channels, lmax)
        self.product = EnvironmentProduct(irs_in, lmax, allowed, channels)
        self.irs_out = self.product.irs_out
        self.latent = ScalarMLP([latent_dim + channels, latent_hidden, latent_dim])
        self.norm = 1.0 / math.sqrt(avg_num_neighbors)
        self.latent_resnet = latent_resnet

    def forward(self, x, v, sh, envelope, receiver, num_atoms: int, scalars_only: bool = False):
        """``v`` ``[E * n, D]`` (any strides) -> ``(x, v)`` with the new ``v`` as ``[D_out, E, n]`` (``[1, E, n]``,
        the ``0e`` part, with ``scalars_only``)."""
        w = self.environment(x, sh)  # [E, n, S]
        env = w.new_zeros((num_atoms,) + w.shape[1:]).index_add(0, receiver, w) * self.norm
        v = self.product(v, env.index_select(0, receiver), scalars_only)
        scalars = v[0]  # the 0e channels (0e x 0e -> 0e always exists, and comes first)
        update = self.latent(torch.cat([x, scalars], dim=-1)) * envelope
        x = (x + update) / math.sqrt(2.0) if self.latent_resnet else update
        return x, v


@register("allegro")
class Allegro(torch.nn.Module):
    """The Allegro representation: per-atom sums of strictly local pair features (see the module docstring).

    With ``scalars_only`` set (a :class:`~clebsch.models.Potential` sets it when
    none of its heads reads more than the ``0e`` features) the last layer computes
    only the ``0e`` part of its tensor product, which its latent MLP reads, and
    the tensor outputs are zero.

    Parameters
    ----------
    num_species : int
        Number of elements.
    cutoff : float
        Radial cutoff ``r_c`` (Å); the energy of an atom depends only on atoms within it.
    num_layers : int
        Number of tensor-product layers (paper: 1-3).
    num_tensor_features : int
        Channels ``n`` of the tensor track: copies of each irrep per pair (paper: 8-64).
    lmax : int
        Highest degree of the spherical harmonics and of the tensor features (paper: 1-3).
    parity : bool
        Tensor features of both parities for each ``l`` (O(3), the paper's full
        parity); otherwise only ``(-1)**l``. Reflections are respected either way.
    latent_dim : int
        Width of the scalar track ``x_ij`` (paper: 64-1024).
    two_body_hidden : int
        Width of the two hidden layers of the two-body MLP.
    latent_hidden : int
        Width of the hidden layer of each latent MLP.
    num_basis : int
        Number of Bessel functions in the distance expansion.
    trainable_basis : bool
        Learn the Bessel frequencies.
    polynomial_p : int
        Degree of the polynomial cutoff envelope.
    avg_num_neighbors : float
        Sums over neighbours (environments, per-atom outputs) are divided by its square root.
    latent_resnet : bool
        Residual update of the scalar track.

    Examples
    --------
    >>> net = Allegro(2, 4.0, num_layers=1, num_tensor_features=2, lmax=1, latent_dim=4)
    >>> net.irreps_out
    4x0e+2x1o+2x1e
    >>> species = torch.tensor([0, 1, 1])
    >>> edge_index = torch.tensor([[0, 1, 0, 2], [1, 0, 2, 0]])
    >>> vectors = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.2, 0], [0, -1.2, 0]])
    >>> net(species, edge_index, vectors).shape
    torch.Size([3, 16])
    """

    def __init__(
        self,
        num_species: int,
        cutoff: float,
        *,
        num_layers: int = 2,
        num_tensor_features: int = 8,
        lmax: int = 2,
        parity: bool = True,
        latent_dim: int = 32,
        two_body_hidden: int = 32,
        latent_hidden: int = 32,
        num_basis: int = 8,
        trainable_basis: bool = True,
        polynomial_p: int = 6,
        avg_num_neighbors: float = 10.0,
        latent_resnet: bool = True,
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if lmax < 0:
            raise ValueError(f"lmax must be >= 0, got {lmax}")
        n = num_tensor_features
        self.num_species = num_species
        self.lmax = lmax
        self.latent_dim = latent_dim
        self.irreps_sh = Irreps.spherical_harmonics(lmax)
        self.basis = BesselBasis(cutoff, num_basis, trainable=trainable_basis)
        self.envelope = PolynomialCutoff(cutoff, p=polynomial_p)
        self.two_body = ScalarMLP([2 * num_species + num_basis, two_body_hidden, two_body_hidden, latent_dim])
        self.embedding = EnvironmentEmbedding(latent_dim, n, lmax)
        allowed = {Irrep(l, p) for l in range(lmax + 1) for p in ((1, -1) if parity else ((-1) ** l,))}
        irs = [Irrep(l, (-1) ** l) for l in range(lmax + 1)]  # the harmonics' irreps
        self.layers = torch.nn.ModuleList()
        for _ in range(num_layers):
            layer = AllegroLayer(irs, allowed, n, lmax, latent_dim, latent_hidden, avg_num_neighbors, latent_resnet)
            self.layers.append(layer)
            irs = layer.irs_out
        # per-atom outputs: the summed scalar track, then the summed tensor features other than 0e, in mul_ir order
        dim = sum(ir.dim for ir in irs)
        starts = [sum(ir.dim for ir in irs[:k]) for k in range(len(irs))]
        columns = [c * dim + s + m for ir, s in zip(irs[1:], starts[1:]) for c in range(n) for m in range(ir.dim)]
        self.register_buffer("_tensor_columns", torch.tensor(columns, dtype=torch.long), persistent=False)
        self._width = n * dim
        self.irreps_out = Irreps([(latent_dim, "0e")] + [(n, ir) for ir in irs[1:]])
        self.norm = 1.0 / math.sqrt(avg_num_neighbors)
        self.register_buffer("_onehot", torch.eye(num_species), persistent=False)
        self.scalars_only = False

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        """Per-atom features ``[N, irreps_out.dim]`` from elements and pair vectors ``r_j - r_i``."""
        sender, receiver = edge_index[0], edge_index[1]
        num_atoms = species.shape[0]
        length = edge_vectors.norm(dim=-1)
        sh = spherical_harmonics(self.irreps_sh, edge_vectors, normalize=True, normalization="component")
        envelope = self.envelope(length)[:, None]
        onehot = self._onehot.to(edge_vectors.dtype)
        pair = torch.cat([onehot[species[receiver]], onehot[species[sender]], self.basis(length)], dim=-1)
        x = self.two_body(pair) * envelope
        v = self.embedding(x, sh)  # [E, n, S], the harmonics' irreps
        rows = v.reshape(-1, v.shape[-1])  # [E * n, S]
        for k, layer in enumerate(self.layers):
            last = self.scalars_only and k == len(self.layers) - 1
            x, v = layer(x, rows, sh, envelope, receiver, num_atoms, last)  # v: [D, E, n], components first
            rows = v.reshape(v.shape[0], -1).T  # [E * n, D], a view, for the next layer
        if self.scalars_only:
            out = x.new_zeros(num_atoms, x.shape[1]).index_add(0, receiver, x) * self.norm
            return torch.cat([out, out.new_zeros(num_atoms, self.irreps_out.dim - x.shape[1])], dim=-1)
        v = v.permute(1, 2, 0)  # [E, n, D]
        tensors = v.reshape(v.shape[0], self._width).index_select(1, self._tensor_columns)  # channels-major -> mul_ir
        per_pair = torch.cat([x, tensors], dim=-1)
        out = per_pair.new_zeros(num_atoms, per_pair.shape[1]).index_add(0, receiver, per_pair)
        return out * self.norm
