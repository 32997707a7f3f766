"""The trainer's Adam runs PyTorch's fused (or multi-tensor) implementation: the same updates as the plain loop."""

import pytest
import torch

from clebsch.train.trainer import _adam


@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
def test_fused_adam_gives_the_plain_loops_updates(cls):
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)]
    runs = []
    for make in (lambda ps: _adam(cls, ps, lr=0.01, weight_decay=0.01, amsgrad=True),
                 lambda ps: cls(ps, lr=0.01, weight_decay=0.01, amsgrad=True, foreach=False)):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = make(params)
        for step in range(5):
            for k, p in enumerate(params):
                p.grad = torch.sin(p.detach() * (step + 1) + k)
            opt.step()
        runs.append((opt, params))
    (fast, a), (plain, b) = runs
    assert fast.param_groups[0].get("fused") or fast.param_groups[0].get("foreach")
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)
