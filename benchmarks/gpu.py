"""fastmaml on one GPU, in one command: exactness, meta-iteration times beside learn2learn, the full protocol.

Three parts, each printed as it finishes, then the rows of benchmarks/RESULTS.md's "Speed on a GPU" table:

1. ``exact``: the layer matrix's CUDA leg (``tests/test_cuda.py``: every stock layer family, float64, two
   second- and first-order inner steps, every execution path on the GPU against plain autograd on the CPU).
2. ``table``: one meta-iteration (outer forward + backward + Adam step, float32, CUDA synchronised around each
   iteration, the median of ``--iters``) of the workloads of ``benchmarks/speed.py`` (identical weights and
   data for every implementation: ``loss0`` must agree): fastmaml's default (``execution`` and ``compile``
   left to the library, timed after ``--warmup-s`` seconds so that ``compile="auto"`` has decided), vmap and
   the loop without compilation, and learn2learn 0.2.0's MAML as its Omniglot example runs it. Also the host
   time per iteration outside the step (``benchmarks/host_time.py``).
3. ``protocol``: ``fastmaml train omniglot-5w1s`` with every default (60,000 iterations, meta-validation,
   the 600-task meta-test), timed as a whole command.

Run from the repository root (about 8 minutes on one H200; learn2learn from the peers folder)::

    PYTHONPATH=src python benchmarks/gpu.py --omniglot data/omniglot --peers peers/learn2learn-maml
    PYTHONPATH=src python benchmarks/gpu.py --parts table --workloads sinusoid --device cpu --iters 3  # a check

The printed rows name the commit; paste them into RESULTS.md with the command that produced them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from speed import WORKLOADS, git_commit, make_problem, make_step  # noqa: E402

# RESULTS.md's rows: (workload, label). The paper's tasks train on 1 query image per class.
ROWS = (
    ("conv-stride-q1", "Omniglot 5w1s, paper's tasks (32 tasks, 1 query per class), ms"),
    ("conv-stride", "Omniglot 5w1s, 15 query per class, ms"),
    ("conv-20w1s-q1", "Omniglot 20w1s (16 tasks, 5 steps), ms"),
    ("sinusoid", "sinusoid (25 tasks, K=10), ms"),
)
COMMAND = "`python benchmarks/gpu.py`"
IMPLS = ("learn2learn", "fastmaml-step", "fastmaml-vmap", "fastmaml-loop")


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_impl(workload: str, impl: str, device, iters: int, warmup_s: float) -> dict:
    """Median seconds of one meta-iteration of ``impl`` on ``workload`` (fresh model, same seed for all)."""
    import torch

    model, batch, loss_fn = make_problem(workload)
    model, batch = model.to(device), batch.to(device)
    cfg = WORKLOADS[workload]
    owner, step = make_step(impl, model, batch, loss_fn, cfg["inner_lr"], False, cfg.get("steps", 1))
    optimizer = torch.optim.Adam(owner.parameters(), lr=1e-3)

    def iteration():
        optimizer.zero_grad(set_to_none=True)
        loss = step()
        optimizer.step()
        return loss

    loss0 = float(iteration())
    until = time.perf_counter() + warmup_s
    while time.perf_counter() < until:
        iteration()
    times = []
    for _ in range(iters):
        sync(device)
        start = time.perf_counter()
        iteration()
        sync(device)
        times.append(time.perf_counter() - start)
    path = getattr(getattr(owner, "engine", None), "last_path", "")
    return dict(ms=1e3 * statistics.median(times), loss0=loss0, path=path)


def table(device, workloads: list[str], iters: int, warmup_s: float, omniglot: str | None) -> dict:
    results: dict = {}
    for workload in workloads:
        row = results.setdefault(workload, {})
        for impl in IMPLS:
            if impl == "fastmaml-loop" and workload != "conv-stride-q1" and device.type == "cuda":
                continue  # one row shows the loop's cost; it is not what a GPU runs
            slow = impl in ("learn2learn", "fastmaml-loop")
            try:
                row[impl] = time_impl(workload, impl, device, max(3, iters // 4) if slow else iters,
                                      warmup_s if impl == "fastmaml-step" else 1.0)
            except Exception as error:  # noqa: BLE001 - a missing peer or a failing path is reported, not fatal
                row[impl] = dict(error=f"{type(error).__name__}: {str(error).splitlines()[0][:120]}")
            print(workload, impl, row[impl], flush=True)
    if omniglot:
        from host_time import host_ms

        results["host_ms"] = host_ms(omniglot, str(device), 500, 5)
        print("host time per iteration outside the step:", results["host_ms"], flush=True)
    return results


def exact(device) -> dict:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"],
                         capture_output=True, text=True, cwd=HERE.parent,
                         env={**os.environ, "PYTHONPATH": str(HERE.parent / "src")})
    counts = dict((k, int(n)) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", out.stdout))
    failures = [line for line in out.stdout.splitlines() if line.startswith("FAILED")]
    result = dict(counts=counts, failures=failures[:10], seconds=time.perf_counter() - start)
    print("exactness on", device, result, flush=True)
    return result


def protocol(omniglot: str, extra: list[str]) -> dict:
    out_dir = Path(tempfile.mkdtemp(prefix="fastmaml-gpu-")) / "omniglot-5w1s"
    command = [sys.executable, "-m", "fastmaml.cli", "train", "omniglot-5w1s", f"data.root={omniglot}", *extra,
               "--out", str(out_dir), "--no-progress"]
    start = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(HERE.parent / "src")})
    minutes = (time.perf_counter() - start) / 60
    if run.returncode != 0:
        return dict(error=(run.stderr.strip().splitlines() or ["?"])[-1], minutes=minutes)
    results = json.loads((out_dir / "eval.json").read_text())
    accuracy = results["maml"]["accuracy"][-1]
    result = dict(minutes=minutes, accuracy=accuracy["mean"], ci95=accuracy["ci95"], command=" ".join(command[2:]))
    print("protocol", result, flush=True)
    return result


def rows(results: dict, device_name: str, commit: str) -> str:
    lines = ["| benchmark | fastmaml | paper | learn2learn 0.2.0 | hardware | command | commit |",
             "|---|---|---|---|---|---|---|"]
    for workload, label in ROWS:
        row = results.get("table", {}).get(workload)
        if not row:
            continue
        mine, peer = row.get("fastmaml-step", {}), row.get("learn2learn", {})
        cell = f"{mine['ms']:.1f} ({mine['path']})" if "ms" in mine else mine.get("error", "–")
        if "ms" in mine and "ms" in peer:
            cell += f", {peer['ms'] / mine['ms']:.0f}x"
        peer_cell = f"{peer['ms']:.0f}" if "ms" in peer else peer.get("error", "–")
        lines.append(f"| {label} | {cell} | – | {peer_cell} | {device_name} | {COMMAND} | `{commit}` |")
    if "host_ms" in results.get("table", {}):
        lines.append(f"| host time per iteration outside the step, omniglot-5w1s, ms | "
                     f"{results['table']['host_ms']:.2f} | – | – | {device_name} | {COMMAND} | `{commit}` |")
    run = results.get("protocol")
    if run:
        cell = f"{run['minutes']:.1f} min, {run['accuracy']:.2f} ± {run['ci95']:.2f} %" if "accuracy" in run \
            else run["error"]
        lines.append(f"| whole `omniglot-5w1s` protocol: minutes, test accuracy | {cell} | 98.7 ± 0.4 % | – | "
                     f"{device_name} | {COMMAND} | `{commit}` |")
    check = results.get("exact")
    if check:
        counts = check["counts"]
        cell = f"{counts.get('passed', 0)} passed, {counts.get('failed', 0)} failed (within 1e-9)"
        lines.append(f"| float64 exactness on CUDA (relative to the autograd loop) | {cell} | – | – | {device_name} | "
                     f"{COMMAND} | `{commit}` |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--parts", nargs="+", default=["exact", "table", "protocol"],
                        choices=["exact", "table", "protocol"])
    parser.add_argument("--workloads", nargs="+", default=[w for w, _ in ROWS], choices=list(WORKLOADS))
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup-s", type=float, default=25.0,
                        help="seconds of untimed default-path iterations (compile='auto' decides within them)")
    parser.add_argument("--omniglot", help="the Omniglot folder (images_background/, images_evaluation/)")
    parser.add_argument("--peers", help="a folder holding the learn2learn package (peer code, for the table)")
    parser.add_argument("--protocol-overrides", nargs="*", default=[], metavar="key=value")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    if args.peers:
        sys.path.insert(0, str(Path(args.peers).resolve()))

    import torch

    device = torch.device(args.device)
    device_name = torch.cuda.get_device_name(device).replace("NVIDIA ", "") if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {device_name}", flush=True)
    results: dict = {}
    if "exact" in args.parts:
        results["exact"] = exact(device)
    if "table" in args.parts:
        results["table"] = table(device, args.workloads, args.iters, args.warmup_s, args.omniglot)
    if "protocol" in args.parts:
        if not args.omniglot:
            parser.error("the protocol part needs --omniglot PATH")
        results["protocol"] = protocol(args.omniglot, args.protocol_overrides)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    print(rows(results, device_name, git_commit()))


if __name__ == "__main__":
    main()
