"""``scopert demo``: the whole path on a fresh machine: data, training, export, tiled inference, report.

By default it makes a small self-contained data set, synthetic blurred phantom spheres with
Poisson-Gaussian noise (as in the 3D-RCAN paper), in 3D. ``--data DIR`` takes real raw/GT pairs
instead: a folder with ``raw/`` and ``gt/`` TIFFs, or the W2S folder of ``../shared/data`` (two stacks
of 12 pairs: 9 train, 3 test). It trains a small RCAN on the CPU within a time budget, exports it to
ONNX, restores the held-out images with the tiled runtime (ONNX Runtime CPU), and writes the restored
TIFFs, a PNG figure and a report (PSNR/SSIM before and after, throughput).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import tifffile

from scopert.errors import InputError

log = logging.getLogger(__name__)

W2S_NOISY, W2S_CLEAN = "w2s_avg1_noisy.tif", "w2s_avg400_clean.tif"


@dataclass
class DemoData:
    train: list[tuple[Path, Path]]
    test: list[tuple[Path, Path]]
    ndim: int
    description: str


@dataclass
class DemoReport:
    data: str
    train_seconds: float
    export_error: float
    halo: dict
    images: list[dict] = field(default_factory=list)
    throughput_mvox_s: float = 0.0
    files: dict = field(default_factory=dict)

    def mean(self, key: str) -> float:
        return float(np.mean([im[key] for im in self.images]))


def phantom_spheres(shape: tuple[int, int, int], n: int, rng: np.random.Generator) -> np.ndarray:
    """Random solid spheres of varied radius and brightness."""
    zz, yy, xx = np.indices(shape, dtype=np.float32)
    vol = np.zeros(shape, np.float32)
    for _ in range(n):
        c = [rng.uniform(0, s) for s in shape]
        r = rng.uniform(2.5, 7.0)
        d2 = ((zz - c[0]) * 2.0) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2  # z sampled 2x coarser
        vol[d2 <= r * r] = np.maximum(vol[d2 <= r * r], rng.uniform(0.3, 1.0))
    return vol


def make_synthetic(folder: Path, seed: int = 0, n_train: int = 4, n_test: int = 2,
                   shape: tuple[int, int, int] = (16, 128, 128)) -> DemoData:
    """Blurred phantom spheres as GT; more blur plus Poisson-Gaussian noise as raw (uint16 TIFFs)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    pairs = []
    for split, count in (("train", n_train), ("test", n_test)):
        for i in range(count):
            clean = phantom_spheres(shape, 60, rng)
            gt = gaussian_filter(clean, (0.5, 1.0, 1.0))
            blurred = gaussian_filter(clean, (1.0, 2.0, 2.0))
            photons = rng.poisson(blurred * 40.0).astype(np.float32)
            raw = photons + rng.normal(0, 2.0, shape) + 100.0
            d = folder / split
            (d / "raw").mkdir(parents=True, exist_ok=True)
            (d / "gt").mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(d / "raw" / f"sphere{i:02d}.tif", np.clip(raw, 0, 65535).astype(np.uint16))
            tifffile.imwrite(d / "gt" / f"sphere{i:02d}.tif", (gt * 1000).astype(np.uint16))
            pairs.append((split, d / "raw" / f"sphere{i:02d}.tif", d / "gt" / f"sphere{i:02d}.tif"))
    return DemoData([(r, g) for s, r, g in pairs if s == "train"], [(r, g) for s, r, g in pairs if s == "test"], 3,
                    f"synthetic phantom spheres, {n_train} train + {n_test} test volumes of {shape}")


def load_pairs_folder(data: Path, work: Path) -> DemoData:
    """Real pairs: the W2S stacks (9 train / 3 test) or raw/ + gt/ folders (last 20% held out)."""
    if (data / W2S_NOISY).exists() and (data / W2S_CLEAN).exists():
        noisy, clean = tifffile.imread(data / W2S_NOISY), tifffile.imread(data / W2S_CLEAN)
        pairs = []
        for i in range(noisy.shape[0]):
            for kind, stack in (("raw", noisy), ("gt", clean)):
                (work / kind).mkdir(parents=True, exist_ok=True)
                tifffile.imwrite(work / kind / f"w2s{i:02d}.tif", stack[i])
            pairs.append((work / "raw" / f"w2s{i:02d}.tif", work / "gt" / f"w2s{i:02d}.tif"))
        return DemoData(pairs[:9], pairs[9:], 2, f"W2S widefield pairs from {data} (9 train, 3 test)")
    raws, gts = sorted((data / "raw").glob("*.tif")), sorted((data / "gt").glob("*.tif"))
    if not raws or len(raws) != len(gts):
        raise InputError(f"--data {data}: expected raw/ and gt/ folders with the same number of TIFFs "
                         f"(found {len(raws)} and {len(gts)}), or the W2S folder of ../shared/data.")
    pairs = list(zip(raws, gts))
    n_test = max(1, len(pairs) // 5)
    ndim = tifffile.imread(raws[0]).ndim
    return DemoData(pairs[:-n_test], pairs[-n_test:], ndim, f"{len(pairs)} pairs from {data}")


def train_config(data: DemoData, minutes: float, seed: int) -> dict:
    small = {"num_channels": 16, "num_residual_groups": 2, "num_residual_blocks": 2, "channel_reduction": 4}
    if data.ndim == 3:
        shape, batch = [8, 64, 64], 2
    else:
        shape, batch = [96, 96], 6
    return {
        "training_image_pairs": [{"raw": str(r), "gt": str(g)} for r, g in data.train],
        "validation_image_pairs": [{"raw": str(r), "gt": str(g)} for r, g in data.train[-1:]],
        "input_shape": shape, "batch_size": batch, "epochs": 1000, "steps_per_epoch": 20,
        "initial_learning_rate": 5e-4, "loss": "mae", "metrics": ["psnr"], "intensity_threshold": 0.0,
        "time_limit_minutes": minutes, "seed": seed, **small,
    }


def evaluate(raw: np.ndarray, restored: np.ndarray, gt: np.ndarray) -> dict:
    """Scale-invariant PSNR (GT percentile-normalized, prediction fitted by least squares) and SSIM."""
    from scopert.metrics import fit_affine, scale_invariant_psnr, ssim

    lo, hi = np.percentile(gt, (0.1, 99.9))
    target = (gt.astype(np.float64) - lo) / (hi - lo)

    def ssim_of(pred):
        a, b = fit_affine(pred.astype(np.float64), target)
        return ssim(a * pred + b, target)

    return {"psnr_raw": scale_invariant_psnr(raw, gt), "psnr_restored": scale_invariant_psnr(restored, gt),
            "ssim_raw": ssim_of(raw.astype(np.float64)), "ssim_restored": ssim_of(restored.astype(np.float64))}


def figure(path: Path, raw: np.ndarray, restored: np.ndarray, gt: np.ndarray, metrics: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def show(img):
        img = img[img.shape[0] // 2] if img.ndim == 3 else img
        lo, hi = np.percentile(img, (1, 99.5))
        return np.clip((img - lo) / (hi - lo + 1e-9), 0, 1)

    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    titles = [f"raw  PSNR {metrics['psnr_raw']:.1f} dB  SSIM {metrics['ssim_raw']:.3f}",
              f"restored  PSNR {metrics['psnr_restored']:.1f} dB  SSIM {metrics['ssim_restored']:.3f}",
              "ground truth"]
    for ax, img, title in zip(axes, (raw, restored, gt), titles):
        ax.imshow(show(img), cmap="gray")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(out_dir: str | Path = "demo_out", data: str | Path | None = None, minutes: float = 2.5,
             seed: int = 0, say: Callable[[str], None] = print) -> DemoReport:
    from scopert.export import export_run
    from scopert.runtime import load
    from scopert.training.rcan.train import train_rcan

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say(f"[1/4] data -> {out / 'data'}")
    dataset = load_pairs_folder(Path(data), out / "data") if data else make_synthetic(out / "data", seed)
    say(f"      {dataset.description}")
    say(f"[2/4] training a small {dataset.ndim}D RCAN on the CPU for at most {minutes:g} min")
    config = train_config(dataset, minutes, seed)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    t0 = time.perf_counter()
    run = train_rcan(out / "config.json", out / "run", resume=False)
    train_seconds = time.perf_counter() - t0
    say(f"[3/4] exporting to ONNX -> {out / 'model.onnx'}")
    card = export_run(run.folder, out / "model.onnx")
    export_error = float(card.verification["onnx_vs_torch"]["max_abs_error"])
    say(f"      max |ONNX - PyTorch| = {export_error:.2e}, halo {card.halo}, tile-invariant {card.tile_invariant}")
    say("[4/4] tiled inference on held-out images (ONNX Runtime CPU)")
    model = load(out / "model.onnx", backend="ort", device="cpu")
    report = DemoReport(dataset.description, round(train_seconds, 1), export_error, dict(card.halo))
    voxels = seconds = 0.0
    for raw_path, gt_path in dataset.test:
        raw, gt = tifffile.imread(raw_path), tifffile.imread(gt_path)
        t1 = time.perf_counter()
        restored = model.predict(raw)
        seconds += time.perf_counter() - t1
        voxels += raw.size
        tifffile.imwrite(out / f"restored_{raw_path.stem}.tif", restored.astype(np.float32), imagej=True)
        metrics = {k: round(float(v), 4) for k, v in evaluate(raw, restored, gt).items()}
        report.images.append({"image": raw_path.name, **metrics})
        say(f"      {raw_path.name}: PSNR {metrics['psnr_raw']:.2f} -> {metrics['psnr_restored']:.2f} dB, "
            f"SSIM {metrics['ssim_raw']:.3f} -> {metrics['ssim_restored']:.3f}")
    report.throughput_mvox_s = round(voxels / seconds / 1e6, 3)
    first_raw, first_gt = dataset.test[0]
    figure(out / "figure.png", tifffile.imread(first_raw), tifffile.imread(out / f"restored_{first_raw.stem}.tif"),
           tifffile.imread(first_gt), report.images[0])
    report.files = {"model": str(out / "model.onnx"), "figure": str(out / "figure.png"),
                    "report": str(out / "report.md"), "run": str(run.folder)}
    (out / "report.json").write_text(json.dumps(report.__dict__, indent=2))
    (out / "report.md").write_text(render_report(report))
    say(f"done: mean PSNR {report.mean('psnr_raw'):.2f} -> {report.mean('psnr_restored'):.2f} dB, "
        f"SSIM {report.mean('ssim_raw'):.3f} -> {report.mean('ssim_restored'):.3f}, "
        f"{report.throughput_mvox_s} Mvox/s; report {out / 'report.md'}, figure {out / 'figure.png'}")
    return report


def render_report(report: DemoReport) -> str:
    lines = [
        "# ScopeRT demo report", "",
        f"- data: {report.data}",
        f"- training: {report.train_seconds} s on the CPU (small RCAN)",
        f"- export: max |ONNX - PyTorch| = {report.export_error:.2e}; halo {report.halo}",
        f"- tiled inference (ONNX Runtime CPU): {report.throughput_mvox_s} Mvox/s", "",
        "| image | PSNR raw (dB) | PSNR restored (dB) | SSIM raw | SSIM restored |", "|---|---|---|---|---|",
    ]
    for im in report.images:
        lines.append(f"| {im['image']} | {im['psnr_raw']:.2f} | {im['psnr_restored']:.2f} | {im['ssim_raw']:.3f} | "
                     f"{im['ssim_restored']:.3f} |")
    lines += ["", "PSNR is scale-invariant: the GT is normalized to its 0.1/99.9 percentiles and the image is "
              "fitted to it by least squares (as CARE does). ![figure](figure.png)", ""]
    return "\n".join(lines)
