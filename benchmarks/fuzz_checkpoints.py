"""Fuzz the five checkpoint importers: mutated and truncated copies of seed-layout files, 2,000 cases per reader.

Every case must end in an import whose run folder loads, or a ScopertError with a message and no run folder left
behind; never another exception, a hang (> --timeout s) or a crash. The cases, mutation kinds and the worker that
catches hangs and crashes are in tests/training/checkpoint_fuzz.py (CI runs 200 per reader with the same code).
Writes benchmarks/results/fuzz_checkpoints.json; exits 1 when any case went wrong.

    python benchmarks/fuzz_checkpoints.py [--cases 2000] [--seed 0] [--readers keras_rcan,cnnt_pt] [--timeout 10]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.training.checkpoint_fuzz import READERS, fuzz  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000, help="cases per reader")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--readers", default=",".join(READERS), help="comma-separated, from " + ", ".join(READERS))
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds after which a case is a hang")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fuzz_checkpoints.json")
    args = parser.parse_args()
    readers = [r for r in args.readers.split(",") if r]

    import h5py
    import numpy as np
    import torch

    done = {"n": 0}
    total = args.cases * len(readers)

    def progress(result) -> None:
        done["n"] += 1
        if result.outcome not in ("imported", "refused"):
            print(f"  {result.reader} #{result.index} ({result.kind}): {result.outcome}: {result.detail}", flush=True)
        if done["n"] % 500 == 0 or done["n"] == total:
            print(f"{done['n']}/{total} cases", flush=True)

    start = time.perf_counter()
    campaign = fuzz(readers, cases=args.cases, seed=args.seed, timeout=args.timeout, progress=progress)
    seconds = time.perf_counter() - start
    summary = campaign.summary()
    report = {
        "what": "checkpoint importers fuzzed with mutated and truncated seed-layout files "
                "(tests/training/checkpoint_fuzz.py)",
        "acceptable_outcomes": ["imported (the run folder loads)", "refused (a ScopertError with a message, no run "
                                "folder left)"],
        "cases_per_reader": args.cases,
        "seed": args.seed,
        "hang_timeout_s": args.timeout,
        "seconds": round(seconds, 1),
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "h5py": h5py.__version__,
                        "hdf5": h5py.version.hdf5_version, "numpy": np.__version__, "machine": platform.machine()},
        "readers": summary,
        "bad_cases": sum(len(s["bad"]) for s in summary.values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for reader, s in summary.items():
        print(f"{reader:>20}: {s['cases']} cases, {s['outcomes']}, slowest {s['slowest_s']} s")
    print(f"{report['bad_cases']} bad cases in {seconds:.0f} s; wrote {args.out}")
    return 1 if report["bad_cases"] else 0


if __name__ == "__main__":
    sys.exit(main())
