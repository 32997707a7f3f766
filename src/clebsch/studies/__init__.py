"""Experiments about what symmetry does to learning, as tools a user runs on their own data.

- :mod:`clebsch.studies.learning_curve`: error against training-set size, with a fitted power law;
- :mod:`clebsch.studies.symmetry_breaking`: learnable order parameters that let an equivariant
  model fit targets of lower symmetry than its inputs;
- :mod:`clebsch.studies.autoencoder`: an equivariant autoencoder with an invariant latent.

Import the submodule you need; this package imports none of them.
"""
