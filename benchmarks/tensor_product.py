"""Tensor-product benchmark: clebsch.nn vs e3nn 0.6 in the same process (CPU, float32, 2 threads).

Cases
-----
conv   NequIP-style convolution: node features 32x0e+32x1o+32x2e gathered on 5,000 edges
       (x) spherical harmonics lmax 3 -> every output with l <= 2 allowed by the selection
       rule (both parities), mode uvu, per-edge weights from a radial MLP (8 Bessel -> 64 -> weights).
message the same convolution as message passing: features of 500 nodes, each edge reading its sender's and
       the products summed into its receiver (5,000 random edges); clebsch's ``gather_scatter_sum`` (C kernels on
       the CPU) against e3nn's product of the gathered features followed by ``index_add``.
fctp   FullyConnectedTensorProduct 32x0e+32x1o+32x2e (x) 0e+1o+2e -> 32x0e+32x1o+32x2e, 5,000 rows.
linear Linear 32x0e+32x1o+32x2e -> 32x0e+32x1o+32x2e, 5,000 rows.

Patterns: forward (no grad), forward+backward, and for conv the force-training pattern
(energy -> autograd.grad(create_graph=True) w.r.t. the inputs -> loss on that gradient -> backward).
Times are the median of repeats after one warm-up. Peak memory: each (case, pattern, library) runs in
its own subprocess; the peak-RSS mark (VmHWM) is reset via /proc/self/clear_refs, and we report its rise
over the RSS just before one
call, i.e. the extra memory that call needed on top of inputs and modules.

Usage: python benchmarks/tensor_product.py [--repeats N]
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

E = 5000
NODES = 500
IRREPS = "32x0e+32x1o+32x2e"
SH = "1x0e+1x1o+1x2e+1x3o"


def build(case, lib, seed=0):
    torch.manual_seed(seed)
    from clebsch import nn as cnn

    if case in ("conv", "message"):
        ours = cnn.ChannelwiseTensorProduct(IRREPS, SH, lmax=2)
        if lib == "e3nn":
            import e3nn.o3 as eo

            ins = [(p.i_in1, p.i_in2, p.i_out, "uvu", True) for p in ours.paths]
            tp = eo.TensorProduct(IRREPS, SH, str(ours.irreps_out), ins, shared_weights=False, internal_weights=False)
        else:
            tp = ours
        mlp = cnn.ScalarMLP([8, 64, ours.weight_numel])
        x1 = torch.randn(E if case == "conv" else NODES, ours.irreps_in1.dim, requires_grad=True)
        x2 = torch.randn(E, ours.irreps_in2.dim, requires_grad=True)
        radial = torch.randn(E, 8, requires_grad=True)
        inputs = (x1, x2, radial)
        sender, receiver = torch.randint(0, NODES, (E,)), torch.randint(0, NODES, (E,))

        if case == "conv":
            def fn(a, b, r):
                return tp(a, b, mlp(r))
        elif lib == "e3nn":
            def fn(a, b, r):
                return a.new_zeros(NODES, tp.irreps_out.dim).index_add(0, receiver, tp(a[sender], b, mlp(r)))
        else:
            def fn(a, b, r):
                return tp.gather_scatter_sum(a, sender, b, mlp(r), receiver, NODES)

        params = list(mlp.parameters())
    elif case == "fctp":
        if lib == "e3nn":
            import e3nn.o3 as eo

            tp = eo.FullyConnectedTensorProduct(IRREPS, "0e+1o+2e", IRREPS)
        else:
            tp = cnn.FullyConnectedTensorProduct(IRREPS, "0e+1o+2e", IRREPS)
        inputs = (torch.randn(E, 288, requires_grad=True), torch.randn(E, 9, requires_grad=True))
        fn, params = tp, list(tp.parameters())
    else:
        if lib == "e3nn":
            import e3nn.o3 as eo

            lin = eo.Linear(IRREPS, IRREPS)
        else:
            lin = cnn.Linear(IRREPS, IRREPS)
        inputs = (torch.randn(E, 288, requires_grad=True),)
        fn, params = lin, list(lin.parameters())
    return fn, inputs, params


def pattern_fn(pattern, fn, inputs, params):
    def forward():
        with torch.no_grad():
            fn(*inputs)

    def fwd_bwd():
        fn(*inputs).pow(2).sum().backward()

    def force():
        energy = fn(*inputs).pow(2).sum()
        grads = torch.autograd.grad(energy, [inputs[0], inputs[1]], create_graph=True)
        sum(g.pow(2).sum() for g in grads).backward()

    return {"forward": forward, "forward+backward": fwd_bwd, "force training": force}[pattern]


def measure_time(case, lib, pattern, repeats):
    f = pattern_fn(pattern, *build(case, lib))
    f()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def child(case, lib, pattern):
    torch.set_num_threads(2)
    f = pattern_fn(pattern, *build(case, lib))
    with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM (peak RSS) to the current RSS
        fh.write("5")
    before = _status_kib("VmRSS")
    f()
    after = _status_kib("VmHWM")
    print(json.dumps({"peak_mib": (after - before) / 1024}))


def _status_kib(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(key)


def peak_memory(case, lib, pattern):
    out = subprocess.run([sys.executable, __file__, "--child", case, lib, pattern], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", nargs=3)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    torch.set_num_threads(2)
    import e3nn

    # correctness guard in the same process
    errors = []
    for case in ("conv", "message"):
        fc, inputs, _ = build(case, "clebsch")
        fe, _, _ = build(case, "e3nn")
        errors.append(f"{case} max |diff| = {(fc(*inputs) - fe(*inputs)).abs().max().item():.2e}")
    print(f"clebsch vs e3nn {e3nn.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, float32; "
          + ", ".join(errors))
    rows = []
    plan = [(c, p) for c in ("conv", "message") for p in ("forward", "forward+backward", "force training")]
    plan += [(c, p) for c in ("fctp", "linear") for p in ("forward", "forward+backward")]
    header = f"{'case':7s} {'pattern':17s} {'e3nn ms':>9s} {'clebsch ms':>10s} {'speed-up':>8s} " \
             f"{'e3nn MiB':>9s} {'clebsch MiB':>11s} {'mem ratio':>9s}"
    print(header)
    print("-" * len(header))
    for case, pattern in plan:
        te = measure_time(case, "e3nn", pattern, args.repeats)
        tc = measure_time(case, "clebsch", pattern, args.repeats)
        me = peak_memory(case, "e3nn", pattern)
        mc = peak_memory(case, "clebsch", pattern)
        ratio = mc / me if me > 0 else float("nan")
        line = f"{case:7s} {pattern:17s} {te * 1e3:9.1f} {tc * 1e3:10.1f} {te / tc:7.2f}x {me:9.1f} {mc:11.1f} {ratio:9.2f}"
        print(line, flush=True)
        rows.append(line)
    print("speed-up = e3nn time / clebsch time; mem ratio = clebsch peak / e3nn peak (VmHWM rise during one call, MiB)")


if __name__ == "__main__":
    main()
