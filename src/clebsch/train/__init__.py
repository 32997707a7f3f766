"""Training: configuration, trainer loop, losses, metrics, EMA, checkpoints, packaged models.

- :mod:`~clebsch.train.config` — the YAML schema (:class:`TrainConfig`, :func:`load_config`).
- :mod:`~clebsch.train.trainer` — :func:`train` and the :class:`Trainer` loop.
- :mod:`~clebsch.train.package` — one-file packaged models (:func:`save_package`, :func:`load`).
- :mod:`~clebsch.train.evaluate` — metrics of a model on a data set.
- :mod:`~clebsch.train.finetune` — starting from a packaged model (``finetune.init_from``).
- :mod:`~clebsch.train.committee` — :func:`train_committee` (``training.committee: K``).
"""

from .config import ConfigError, TrainConfig, default_config_yaml, load_config

__all__ = ["ConfigError", "TrainConfig", "default_config_yaml", "load_config", "train", "load", "evaluate", "train_committee"]


def __getattr__(name):
    if name == "train":
        from .trainer import train

        return train
    if name == "load":
        from ..models.package import load

        return load
    if name == "train_committee":
        from .committee import train_committee

        return train_committee
    if name == "evaluate":
        from .evaluate import evaluate

        return evaluate
    raise AttributeError(f"module 'clebsch.train' has no attribute {name!r}")
