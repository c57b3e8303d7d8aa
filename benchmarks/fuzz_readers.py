"""Fuzz every reader a user's file reaches, with mutated and truncated real files, in child processes.

Readers: TIFF (read_image + the whole array + check_array, and the streamed TiffSlabReader), HDF5, Zarr
(read_image, a slab, the whole array, check_array), the ModelCard sidecar (read_sidecar + validate +
the runtime's layouts), and the training configs (3D-RCAN JSON, pytorch-3dunet YAML, TA-GAN and SHINE
YAML/JSON, CNNT training JSON and the CNNT seed JSON the importer reads). Seeds are small crops of
``shared/data`` and the seeds' own config formats (``tests/fuzz/corpus.py``); cases are byte flips,
interesting integers over headers, truncation, inserted/deleted/duplicated runs, and for JSON/YAML
structural edits (dropped keys, wrong types, huge numbers, NaN, deep nesting) (``tests/fuzz/mutators.py``).

Each case runs in a pool of worker processes with a per-case timeout, so a hang (> --timeout s) or a
crash (a segfault in a C library) is caught and counted; the worker is then replaced. Outcomes: ok,
scopert (a ScopertError with a message: the wanted refusal), bug (any other exception), hang, crash.
Case ``i`` of a reader is deterministic: ``tests.fuzz.targets.make_case(reader, i, ...)`` rebuilds it.
Writes benchmarks/results/fuzz_readers.json.

    python benchmarks/fuzz_readers.py [--cases 2000] [--workers 2] [--timeout 10] [--readers tiff,card]
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.fuzz.workers import Worker, run_jobs  # noqa: E402

DATA = Path(os.environ.get("SCOPERT_SHARED", REPO.parent / "shared")) / "data"

# Bugs this fuzzer found in the readers, all fixed (each has a regression test in
# tests/runtime/test_fuzz_readers.py). Kept here so the results file says what was found.
FIXED_BUGS = [
    {"reader": "tiff", "what": "tifffile's parser raised RuntimeError ('incompatible keyframe'), struct.error, "
     "TypeError, ZeroDivisionError and AssertionError on damaged IFDs; only ValueError/OSError/... were "
     "turned into InputError", "fix": "runtime/io/tiff.py: any exception while parsing -> InputError naming the file"},
    {"reader": "tiff", "what": "a compressed TIFF whose header claims 2**19 x 2**19 pixels was decoded into a "
     "512 GiB array (MemoryError or an OOM kill)", "fix": "runtime/io/image.check_fits_in_memory before decoding"},
    {"reader": "hdf5", "what": "one flipped byte in the length of the variable-length 'axes' attribute made "
     "HDF5 allocate and touch 4 GiB for ~9 s before failing (a hang on a loaded machine, an OOM risk on a small "
     "one)", "fix": "runtime/io/hdf5._claimed_vlen_length reads the claimed length from the object header first"},
    {"reader": "hdf5", "what": "damaged chunks (failed gzip filter, bad global heap) raised OSError from "
     "np.asarray(image.array); damaged object headers raised RuntimeError ('bad local heap signature') while "
     "listing datasets", "fix": "runtime/io/hdf5.CheckedDataset (an h5py.Dataset) and wrapped lookups -> InputError"},
    {"reader": "zarr", "what": "about 40 exception types from zarr/numcodecs (JSONDecodeError, UnicodeDecodeError, "
     "MetadataValidationError, codec RuntimeError, SystemError, TypeError in attrs) at open or read time",
     "fix": "runtime/io/zarrstore.read_zarr wraps opening; image.GuardedArray turns read errors into InputError"},
    {"reader": "card", "what": "a sidecar with invalid UTF-8 raised UnicodeDecodeError; deep nesting raised "
     "RecursionError; halo/divisor/scale of the wrong type (list, null, NaN, Infinity) raised TypeError, "
     "ValueError or OverflowError in validate", "fix": "card.py: read_sidecar decodes with a CardError; validate "
     "checks the type and range of every field (ints, finite numbers, axis keys, known strings, bounds)"},
    {"reader": "unet_config", "what": "a file path longer than the file system allows raised OSError "
     "(ENAMETOOLONG) from Path.exists", "fix": "unet_config._expand: ConfigError naming the key"},
    {"reader": "shine_config", "what": "resize: 5, loss_function: [..], data_path: 3 raised TypeError",
     "fix": "config_file.check_option_types checks every option against its dataclass field type"},
    {"reader": "cnnt_config", "what": "height: '128', loss_weights: {..}, im_value_scale: [[..]] raised "
     "TypeError/ValueError inside the checks", "fix": "config_file.check_option_types in load_cnnt_config"},
    {"reader": "cnnt_seed_config", "what": "height: [] raised IndexError, height: [Infinity] OverflowError, "
     "n_head: 0 ZeroDivisionError in CnntConfig", "fix": "models/cnnt.CnntConfig checks empty lists and integer fields before using them"},
]


# ---------------------------------------------------------------------------------------- the worker


def _setup(corpus: dict[str, list[str]], work: str) -> Callable[[tuple[str, int]], dict]:
    """In the worker: import what the cases need, then run each (reader, index) job to an outcome dict."""
    import logging
    import warnings

    logging.getLogger().addHandler(logging.NullHandler())  # no lastResort printing; levels unchanged
    warnings.simplefilter("ignore")
    from tests.fuzz.targets import run_case

    seeds = {reader: [Path(p) for p in paths] for reader, paths in corpus.items()}
    for module in WARM_IMPORTS:  # before the first case's clock starts (torch alone takes seconds)
        importlib.import_module(module)

    def handle(job: tuple[str, int]) -> dict:
        reader, index = job
        if reader == SELFTEST:
            _selftest_case(index)
            return {"reader": reader, "index": index, "outcome": "ok", "seconds": 0.0}
        return run_case(reader, index, seeds[reader], Path(work)).to_dict()

    return handle


SELFTEST = "_selftest"
WARM_IMPORTS = ("scopert.runtime.io", "scopert.card", "scopert.runtime.layout", "zarr", "yaml",
                "scopert.training.rcan.config", "scopert.training.unet.config", "scopert.training.tagan.config",
                "scopert.training.blindspot.train", "scopert.training.cnnt.train",
                "scopert.training.cnnt.importer")


def _selftest_case(index: int) -> None:
    """Case 0 hangs, case 1 dies of a segfault, case 2 returns: the harness must count hang, crash, ok."""
    import signal

    if index == 0:
        time.sleep(3600)
    elif index == 1:
        os.kill(os.getpid(), signal.SIGSEGV)


def selftest(workers: list[Worker]) -> dict:
    """Prove on the live worker pool that a hang and a crash are caught, counted and the worker replaced."""
    results = fuzz_reader(SELFTEST, 3, workers, timeout=2.0)
    outcomes = [r["outcome"] for r in results]
    if outcomes != ["hang", "crash", "ok"]:
        raise SystemExit(f"the harness's self-test failed: expected hang, crash, ok; got {outcomes}")
    return {"outcomes": outcomes, "crash_error": results[1]["error"]}


def fuzz_reader(reader: str, cases: int, workers: list[Worker], timeout: float) -> list[dict]:
    """Run cases 0..cases-1 of ``reader`` on the workers; return one outcome dict per case."""
    results = []
    for (name, index), got in run_jobs([(reader, i) for i in range(cases)], workers, timeout):
        if not isinstance(got, dict):
            outcome, detail, seconds = got
            got = {"reader": name, "index": index, "outcome": outcome, "seconds": seconds, "error": detail}
        results.append(got)
    return sorted(results, key=lambda r: r["index"])


def summarize(reader: str, results: list[dict], wall: float) -> dict:
    counts = collections.Counter(r["outcome"] for r in results)
    seconds = [r["seconds"] for r in results]
    refusals = collections.Counter(r["error"].split(":")[0] for r in results if r["outcome"] == "scopert")
    examples: dict[str, str] = {}
    for r in results:
        if r["outcome"] == "scopert":
            examples.setdefault(r["error"].split(":")[0], r["error"][:240])
    return {
        "reader": reader,
        "cases": len(results),
        "outcomes": {k: counts.get(k, 0) for k in ("ok", "scopert", "bug", "hang", "crash")},
        "wall_seconds": round(wall, 2),
        "case_seconds": {"median": round(statistics.median(seconds), 4), "max": round(max(seconds), 3)},
        "refusals_by_type": dict(refusals),
        "refusal_examples": list(examples.values()),
        "bugs": [r for r in results if r["outcome"] in ("bug", "hang", "crash")],
    }


def main() -> None:
    from tests.fuzz.corpus import build_corpus
    from tests.fuzz.targets import READERS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2000, help="cases per reader")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds before a case counts as a hang")
    parser.add_argument("--readers", default=",".join(READERS), help="comma-separated subset of readers")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fuzz_readers.json")
    args = parser.parse_args()
    readers = args.readers.split(",")
    unknown = sorted(set(readers) - set(READERS))
    if unknown:
        parser.error(f"unknown readers {unknown}; known: {', '.join(READERS)}")

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="scopert-fuzz-") as tmp:
        tmp = Path(tmp)
        corpus = {k: [str(p) for p in v] for k, v in build_corpus(DATA, tmp / "corpus").items()}
        slots = [Worker(_setup, (corpus, str(tmp / "work" / f"w{n}"))) for n in range(args.workers)]
        summaries = []
        try:
            harness = selftest(slots)
            print(f"harness self-test: {harness}", flush=True)
            for reader in readers:
                t0 = time.perf_counter()
                results = fuzz_reader(reader, args.cases, slots, args.timeout)
                summary = summarize(reader, results, time.perf_counter() - t0)
                summary["seeds"] = [Path(p).name for p in corpus[reader]]
                summaries.append(summary)
                print(f"{reader:17s} {summary['cases']:5d} cases {summary['wall_seconds']:7.1f} s  "
                      f"{summary['outcomes']}", flush=True)
        finally:
            for slot in slots:
                slot.close()
    total = collections.Counter()
    for s in summaries:
        total.update(s["outcomes"])
    report = {
        "what": "mutated and truncated real files through every reader; outcome per case",
        "command": "python benchmarks/fuzz_readers.py " + " ".join(sys.argv[1:]),
        "cases_per_reader": args.cases,
        "timeout_s": args.timeout,
        "workers": args.workers,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "harness_selftest": harness,
        "total_cases": sum(total.values()),
        "total_outcomes": dict(total),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "readers": summaries,
        "fixed_bugs": FIXED_BUGS,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"total {report['total_cases']} cases in {report['total_seconds']} s: {dict(total)} -> {args.out}")


if __name__ == "__main__":
    main()
