"""Where a Conv-4 meta-iteration's time goes on this CPU: each convolution kernel of the query pass.

For every layer of the strided Conv-4 (3x3, stride 2, padding 1, 64 filters) at the size it has in the
issue's workload (one task's 75 query images), times the forward convolution and, from
``aten.convolution_backward`` (the kernel both fastmaml and learn2learn reach through autograd), the
input gradient and the weight gradient separately, with the GFLOP/s each reaches. Alternatives for the
input gradient (``conv_transpose2d``) and the weight gradient (``unfold`` + one matrix product) are
timed beside them. One thread, median of 20 calls after 3.

    PYTHONPATH=src python benchmarks/conv_kernels.py
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def median_ms(fn, calls: int = 20) -> float:  # type: ignore[no-untyped-def]
    for _ in range(3):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[calls // 2]


def layer_row(n: int, channels: int, side: int) -> str:
    """One table row: layer ``channels x side x side`` on ``n`` images."""
    backward = torch.ops.aten.convolution_backward
    x, w = torch.randn(n, channels, side, side), torch.randn(64, channels, 3, 3)
    y = F.conv2d(x, w, stride=2, padding=1)
    g, out = torch.randn_like(y), y.shape[-1]
    macs = n * 64 * channels * 9 * out * out
    args = (g, x, w, None, [2, 2], [1, 1], [1, 1], False, [0, 0], 1)
    fwd = median_ms(lambda: F.conv2d(x, w, stride=2, padding=1))
    gin = median_ms(lambda: backward(*args, [True, False, False]))
    gw = median_ms(lambda: backward(*args, [False, True, False]))
    pad = side - ((out - 1) * 2 - 2 + 3)
    transpose = median_ms(lambda: F.conv_transpose2d(g, w, stride=2, padding=1, output_padding=pad))

    def weight_by_matmul() -> torch.Tensor:
        cols = F.unfold(x, 3, padding=1, stride=2)  # (n, channels * 9, out * out)
        flat_g = g.reshape(n, 64, -1).transpose(0, 1).reshape(64, -1)
        return (flat_g @ cols.transpose(1, 2).reshape(-1, channels * 9)).view_as(w)

    mm = median_ms(weight_by_matmul)
    rates = " / ".join(f"{2 * macs / t / 1e6:.0f}" for t in (fwd, gin, gw))
    return f"| {channels}x{side}x{side} | {fwd:.2f} | {gin:.2f} | {gw:.2f} | {rates} | {transpose:.2f} | {mm:.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=75, help="images per call (one task's query set)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"# torch {torch.__version__}, {args.images} images, {args.threads} thread(s); GFLOP/s = 2 * MACs / time")
    print(
        "| layer (input) | forward ms | input grad ms | weight grad ms | GFLOP/s fwd / input grad / weight grad "
        "| conv_transpose2d ms | unfold+matmul weight grad ms |"
    )
    print("|---|---:|---:|---:|---|---:|---:|")
    for channels, side in ((1, 28), (64, 14), (64, 7), (64, 4)):
        print(layer_row(args.images, channels, side))


if __name__ == "__main__":
    main()
