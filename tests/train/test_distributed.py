"""Two gloo processes on the CPU train to the same weights as one process at the same global batch."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from clebsch.train.trainer import train

from .conftest import quiet, tiny_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, config):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        train(config, log=lambda *_: None)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")
def test_two_gloo_processes_match_one(tiny_xyz, tmp_path):
    extra = {"training": {"max_epochs": 2, "progress": False, "plots": False}}
    single = tiny_config(tiny_xyz, tmp_path / "single", **extra)
    train(single, log=quiet)
    double = tiny_config(tiny_xyz, tmp_path / "ddp", **extra)
    mp.spawn(_worker, args=(2, _free_port(), double), nprocs=2, join=True)
    a = torch.load(tmp_path / "single" / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=False)
    assert a["step"] == b["step"]
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-7, atol=1e-9)
