"""`training.compile`: the compiled training step follows eager training; unsupported runs train eagerly."""

import math
import warnings

import numpy as np
import pytest

from clebsch.train import train

from .conftest import tiny_config


def test_training_compiled_follows_eager_training(tmp_path, tiny_xyz):
    """`training.compile: true` with TorchInductor: the same losses, epoch by epoch, as eager (float64)."""
    from torch._inductor import config as inductor_config

    def run(name, compile_):
        cfg = tiny_config(tiny_xyz, tmp_path / name, model={"name": "schnet", "cutoff": 3.0, "num_layers": 1,
                                                            "channels": 4},
                          training__compile=compile_, training__max_epochs=3, training__ema_decay=None)
        logs = []
        result = train(cfg, log=logs.append)
        rows = (tmp_path / name / "metrics.csv").read_text().splitlines()
        return result, rows, logs

    with inductor_config.patch(compile_threads=1):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            _, compiled_rows, logs = run("compiled", True)
    _, eager_rows, _ = run("eager", False)
    assert any(line.startswith("compiled the training step in") for line in logs)
    header = compiled_rows[0].split(",")
    col = header.index("train_loss")
    a = [float(r.split(",")[col]) for r in compiled_rows[1:]]
    b = [float(r.split(",")[col]) for r in eager_rows[1:]]
    assert len(a) == len(b) == 3 and all(math.isfinite(x) for x in a)
    assert np.allclose(a, b, rtol=1e-9), (a, b)


def test_compile_of_a_conditioned_model_trains_eagerly_with_one_warning(tmp_path, tiny_xyz):
    cfg = tiny_config(tiny_xyz, tmp_path / "run", training__compile=True, training__max_epochs=1,
                      model={"name": "schnet", "cutoff": 3.0, "num_layers": 1, "channels": 4,
                             "conditioning": ["charge"]})
    with pytest.warns(RuntimeWarning, match="conditioned model is trained eagerly"):
        train(cfg, log=lambda msg: None)
