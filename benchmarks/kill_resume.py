"""Kill-and-resume trials: SIGKILL `fastmaml train` at random moments, resume, compare with an uninterrupted run.

Each trial kills the run ``--kills`` times (after a random amount of logged progress plus a random
0-30 ms, so kills land anywhere: mid-step, mid-checkpoint-write, mid-log-line), resumes after each
kill, lets the last resume finish, then compares weights, optimizer state, metrics.jsonl losses and
eval.json with an uninterrupted run of the same seed, bit for bit.

    PYTHONPATH=src python benchmarks/kill_resume.py --trials 10 --kills 3
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_resume import differences, interrupted_run, reference_run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        reference_run(root / "reference")
        identical = 0
        for trial in range(args.trials):
            start = time.perf_counter()
            stops = interrupted_run(root / f"trial-{trial}", [signal.SIGKILL] * args.kills, rng)
            killed = sum(status == -signal.SIGKILL for _, status, _ in stops)
            diff = differences(root / "reference", root / f"trial-{trial}")
            identical += not diff and killed == args.kills
            verdict = "bit-identical" if not diff else "DIFFERS: " + ", ".join(diff)
            print(f"trial {trial}: {killed}/{args.kills} kills landed, {verdict} ({time.perf_counter() - start:.1f} s)",
                  flush=True)
    print(f"{identical} of {args.trials} kill-and-resume trials bit-identical to the uninterrupted run")


if __name__ == "__main__":
    main()
