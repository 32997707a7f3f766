"""The compiled spherical-harmonics kernels against the PyTorch path, and the fallback without a compiler."""

import warnings

import pytest
import torch

from clebsch.o3 import _native, spherical_harmonics
from clebsch.o3 import _spherical_harmonics as sh_module

NORMS = ["component", "norm", "integral"]


def values_and_grad(ls, x, normalize, normalization, native, monkeypatch):
    monkeypatch.setenv("CLEBSCH_NATIVE", "1" if native else "0")
    x = x.clone().requires_grad_()
    y = spherical_harmonics(ls, x, normalize, normalization)
    w = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).to(x.dtype).reshape(y.shape)
    (g,) = torch.autograd.grad((y * w).sum(), x)
    return y.detach(), g


@pytest.mark.parametrize("ls", [[0], [1], [0, 1, 2, 3], [3, 0, 2], [0, 1, 2, 3, 4, 5, 6]])
@pytest.mark.parametrize("normalize", [True, False])
def test_native_equals_torch_float64(ls, normalize, monkeypatch):
    x = torch.randn(1000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[7] = 0.0  # a zero vector (padded edge)
    for normalization in NORMS:
        theirs = values_and_grad(ls, x, normalize, normalization, False, monkeypatch)
        ours = values_and_grad(ls, x, normalize, normalization, True, monkeypatch)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
        with torch.no_grad():  # the path without an autograd node
            torch.testing.assert_close(spherical_harmonics(ls, x, normalize, normalization), theirs[0],
                                       atol=1e-12, rtol=1e-12)
    assert sh_module._KERNELS[(tuple(ls), "integral", normalize, torch.float64)] is not None, "the kernel did not build"


@pytest.mark.parametrize("ls", [[0, 1, 2, 3], [1], [0, 1, 2], [3, 0, 2], [2, 4], [0, 1, 2, 3, 4, 5, 6]])
def test_native_float32_and_threads(ls, monkeypatch):
    """Float32 (groups of 8 points in registers under AVX2), several threads, sizes that are not multiples of the block.

    Output widths 16, 3, 9, 13, 14 and 49 cover whole 8 x 8 transposes, the remainder columns and both together.
    """
    x = torch.randn(50_001, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    x[[5, 40, 50_000]] = 0.0  # zero vectors inside a group, a block and the last partial block
    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        ours = values_and_grad(ls, x, True, "component", True, monkeypatch)
        unnormalized = values_and_grad(ls, x[:1003], False, "norm", True, monkeypatch)
    finally:
        torch.set_num_threads(previous)
    theirs = values_and_grad(ls, x.double(), True, "component", False, monkeypatch)
    theirs_unnormalized = values_and_grad(ls, x[:1003].double(), False, "norm", False, monkeypatch)
    for a, b in [*zip(ours, theirs), *zip(unnormalized, theirs_unnormalized)]:
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, atol=2e-5 * max(ls) ** 2, rtol=2e-5)
    assert sh_module._KERNELS[(tuple(ls), "component", True, torch.float32)] is not None


def test_native_second_derivatives(monkeypatch):
    """create_graph through the kernel's backward goes to the differentiable formula."""
    monkeypatch.setenv("CLEBSCH_NATIVE", "1")
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64, requires_grad=True)
    f = lambda x: spherical_harmonics([0, 1, 2, 3], x, True)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


def test_without_a_compiler_falls_back_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("CLEBSCH_NATIVE", "1")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("CLEBSCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sh_module, "_KERNELS", {})
    monkeypatch.setattr(_native, "_LIBRARIES", {})
    monkeypatch.setattr(_native, "_FAILED", {})
    x = torch.randn(100, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="no-such-cc"):
        y = spherical_harmonics([0, 1, 2], x, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spherical_harmonics([0, 1, 2, 3], x, True)  # a second kernel fails quietly
    monkeypatch.setenv("CLEBSCH_NATIVE", "0")
    torch.testing.assert_close(y, spherical_harmonics([0, 1, 2], x, True), atol=0, rtol=0)


def test_cached_library_is_reused(monkeypatch, tmp_path):
    """A second process (simulated by clearing the in-memory tables) loads the cached file, compiles nothing."""
    monkeypatch.setenv("CLEBSCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_native, "_LIBRARIES", {})
    source = "double twice(double x) { return 2 * x; }\n"
    lib = _native.load("test", source)
    assert lib is not None
    files = list(tmp_path.glob("test-*.so"))
    assert len(files) == 1
    monkeypatch.setattr(_native, "_LIBRARIES", {})
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))  # would fail if it compiled again
    import ctypes

    again = _native.load("test", source)
    again.twice.restype, again.twice.argtypes = ctypes.c_double, [ctypes.c_double]
    assert again.twice(21.0) == 42.0


_FORK_SCRIPT = """
import multiprocessing, torch
from clebsch.o3 import spherical_harmonics
torch.set_num_threads(2)
x = torch.randn(40_000, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
expected = spherical_harmonics([0, 1, 2], x, True)  # runs the kernel on two threads here


def child(x):
    # numpy out: sending a tensor back goes through PyTorch's shared-memory copy, itself not fork-safe
    return spherical_harmonics([0, 1, 2], x, True).numpy()


with multiprocessing.get_context("fork").Pool(1) as pool:
    result = pool.apply_async(child, (x,)).get(timeout=60)
assert (result == expected.numpy()).all()
print("ok")
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="fork is POSIX-only")
def test_threads_work_in_a_forked_child(tmp_path):
    """A child forked after the kernel ran on threads (a data-loader worker) must not wait on its parent's threads.

    In a fresh interpreter: this test process has run PyTorch's own OpenMP
    regions, which are not safe to use again in a forked child.
    """
    import os
    import subprocess
    import sys

    script = tmp_path / "fork.py"
    script.write_text(_FORK_SCRIPT)
    env = {**os.environ, "CLEBSCH_NATIVE": "1", "OMP_NUM_THREADS": "2"}
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_python_thread_slices_give_the_same_numbers(monkeypatch):
    """The path for compilers without OpenMP: the range cut into slices run by Python threads."""
    monkeypatch.setenv("CLEBSCH_NATIVE", "1")
    x = torch.randn(30_001, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expected = spherical_harmonics([0, 1, 2, 3], x, True)
    forward = sh_module._KERNELS[((0, 1, 2, 3), "component", True, torch.float64)][0]
    out = torch.empty_like(expected)
    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        _native.parallel_for(forward, x.shape[0], x.data_ptr(), out.data_ptr(), openmp=False)
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


def test_float32_without_avx2_groups(monkeypatch):
    """The float32 kernel built as on a CPU without AVX2 (blocks of 32 through the stack) gives the same numbers."""
    import ctypes

    monkeypatch.setenv("CLEBSCH_NATIVE", "1")
    ls = (0, 1, 2, 3)
    source = sh_module._kernel_source(ls, "component", True, double=False)
    assert "defined(__AVX2__)" in source
    lib = _native.load("spherical_harmonics_no_avx2", source.replace("defined(__AVX2__)", "0"))
    assert lib is not None
    p, n = ctypes.c_void_p, ctypes.c_int64
    lib.sh_forward.argtypes = [p, p, n, n, ctypes.c_int]
    lib.sh_backward.argtypes = [p, p, p, n, n, ctypes.c_int]
    x = torch.randn(1_001, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float32)
    x[3] = 0.0
    grad = torch.randn(1_001, 16, generator=torch.Generator().manual_seed(7), dtype=torch.float32)
    out, gx = torch.empty_like(grad), torch.empty_like(x)
    lib.sh_forward(x.data_ptr(), out.data_ptr(), 0, x.shape[0], 1)
    lib.sh_backward(x.data_ptr(), grad.data_ptr(), gx.data_ptr(), 0, x.shape[0], 1)
    xd = x.double().requires_grad_()
    monkeypatch.setenv("CLEBSCH_NATIVE", "0")
    expected = spherical_harmonics(list(ls), xd, True, "component")
    (expected_gx,) = torch.autograd.grad(expected, xd, grad.double())
    torch.testing.assert_close(out.double(), expected.detach(), atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(gx.double(), expected_gx, atol=2e-4, rtol=2e-4)
