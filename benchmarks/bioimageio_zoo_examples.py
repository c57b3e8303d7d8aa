"""The zoo spec repository's example packages through ScopeRT and through bioimageio.core, side by side.

For each package in ``../shared/data/bioimageio_examples``: import it offline (``--trust-package``: their weights
are ``pytorch_state_dict``), then compare with the package's own test output over the whole test image and its
interior (beyond the declared halo, at least 32 px) for ScopeRT on ONNX Runtime and OpenVINO and for
bioimageio.core's whole-image ``predict``; on a larger real image (the 512x512 DSB 2018 nuclei), ScopeRT's tiles
against bioimageio.core's blockwise ``predict`` with blocks of the package's own size. Writes
``benchmarks/results/bioimageio_zoo_examples.{json,md}``.

Run: ``.venv/bin/python benchmarks/bioimageio_zoo_examples.py``
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
EXAMPLES = DATA / "bioimageio_examples"
NUCLEI = DATA / "stardist_nuclei_2d" / "stardist_dsb2018_img2d.tif"
OUT = ROOT / "benchmarks" / "results" / "bioimageio_zoo_examples"
log = logging.getLogger("bioimageio_zoo_examples")


def core_predict(package: Path, image: np.ndarray, block: dict[str, int] | None) -> np.ndarray:
    """bioimageio.core's predict on a 2D image: whole (block None) or blockwise."""
    from bioimageio.core import Sample, Tensor, predict

    from scopert.export.bioimageio.importer import load_model_description

    descr = load_model_description(package)  # format 0.5 (the zoo's 0.4 fixed-shape example converted)
    tid = str(descr.inputs[0].id)
    sample = Sample(members={tid: Tensor.from_numpy(image[None, None].astype(np.float32),
                                                    dims=("batch", "channel", "y", "x"))}, stat={}, id="x")
    kwargs = {"input_block_shape": {tid: block}} if block else {}
    result = predict(model=descr, inputs=sample, **kwargs)
    return next(iter(result.members.values())).data.to_numpy()[0, 0]


def errors(got: np.ndarray, ref: np.ndarray, margin: int) -> dict[str, float]:
    diff = np.abs(got.astype(np.float64) - ref)
    inner = diff[margin:-margin, margin:-margin] if min(diff.shape) > 2 * margin else diff[:0, :0]
    return {"whole": float(diff.max()), "interior": float(inner.max()) if inner.size else float("nan"),
            "range": float(np.ptp(ref))}


def one(name: str) -> dict:
    from scopert.export.bioimageio.importer import import_package
    from scopert.runtime import load

    src = EXAMPLES / name
    x, expected = np.load(src / "test_input.npy")[0, 0], np.load(src / "test_output.npy")[0, 0]
    row: dict = {"package": name}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / f"{name}.onnx"
        t0 = time.perf_counter()
        res = import_package(src, onnx_path, trust_package=True)
        row["import_s"] = round(time.perf_counter() - t0, 2)
        row["notes"] = res.notes
        card = res.card
        margin = max(32, max(card.halo.values(), default=0))
        row["margin"] = margin
        image = tifffile.imread(NUCLEI).astype(np.float32)
        block = dict(card.input.fixed) if card.input.fixed else None
        block = {a: n for a, n in (block or {}).items() if a in "yx"} or {"y": 256, "x": 256}
        for backend in ("ort", "openvino"):
            with load(onnx_path, backend=backend, device="cpu") as model:
                row[f"scopert_{backend}_vs_test_output"] = errors(model.predict(x), expected, margin)
                t0 = time.perf_counter()
                ours = model.predict(image)
                row[f"scopert_{backend}_512_s"] = round(time.perf_counter() - t0, 3)
                if backend == "ort":
                    ours_ort = ours
    row["core_whole_vs_test_output"] = errors(core_predict(src, x, None), expected, margin)
    try:
        t0 = time.perf_counter()
        theirs = core_predict(src, image, block)
        row["core_blockwise_512_s"] = round(time.perf_counter() - t0, 3)
        row["scopert_ort_vs_core_blockwise_512"] = errors(ours_ort, theirs, margin)
        row["block"] = block
    except Exception as exc:  # noqa: BLE001 - bioimageio.core refuses some packages (reported, not hidden)
        row["core_blockwise_512_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return row


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    rows = [one(name) for name in sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir())]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    lines = ["| package | ScopeRT ORT vs test output (whole / interior) | ScopeRT OpenVINO | bioimageio.core whole | "
             "ScopeRT vs core blockwise on 512x512 (whole / interior) | output range |", "|---|---|---|---|---|---|"]
    def fmt(e: dict) -> str:
        return f"{e['whole']:.2e} / {e['interior']:.2e}"

    for r in rows:
        blockwise = (fmt(r["scopert_ort_vs_core_blockwise_512"]) if "block" in r
                     else r.get("core_blockwise_512_error", "-")[:80])
        lines.append(f"| {r['package']} | {fmt(r['scopert_ort_vs_test_output'])} | "
                     f"{fmt(r['scopert_openvino_vs_test_output'])} | {fmt(r['core_whole_vs_test_output'])} | "
                     f"{blockwise} | {r['scopert_ort_vs_test_output']['range']:.3g} |")
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
