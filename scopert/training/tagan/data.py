"""TA-GAN training data: aligned channel stacks or one folder per modality, the seed's scaling, random crops.

Layouts (seeds.md 2.2):

- ``stack`` (the seed's ``axons`` / ``dendrites`` loaders): every ``*.tif`` in the folder is one image whose
  channels lie on axis 0, ordered ``[input x input_nc, target x output_nc, seg x seg_nc]``, e.g. axons
  ``[confocal, STED, seg]`` and dendrites ``[confocal, STED, seg_rings, seg_fibers]``.
- ``folders`` (the seed's SAureus layout): one sub-folder per modality (default ``input/``, ``target/``,
  ``seg/``), files paired by identical names; each file is (H, W) or (C, H, W).

Scaling: images map to [-1, 1] like the seed's ``Normalize(0.5, 0.5)`` output. By default each input and target
image is min-max scaled on its own (the runtime does the same per acquisition: card normalization ``minmax``,
symmetric) and segmentation labels become +1 where > 0 and -1 elsewhere (the seed's 255 / 32768 labels end at
+1). ``compat_8bit`` reproduces the seed's grayscale path instead: PIL ``convert('L')`` clips counts to
[0, 255] (floats are truncated), then ``/127.5 - 1``, for every channel including the labels.

``CropSampler`` draws the seed's ``crop_rotation`` augmentation (random crop, h/v flips, a rotation by a
multiple of 90 degrees) from its own seeded numpy Generator, whose state is saved for an exact resume.
``center_crops`` gives the fixed validation crops (the seed validates with ``preprocess='center'``).

Also here: the semi-synthetic degradation used for tests and demos (blur, lower resolution, Poisson-Gaussian
noise) and an Otsu threshold for making structure masks.

Imports numpy, scipy and tifffile only; must not import torch, ``scopert.export`` or ``scopert.runtime``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from scopert.errors import ConfigError, InputError

log = logging.getLogger(__name__)

DEFAULT_MODALITY_DIRS = {"input": "input", "target": "target", "seg": "seg"}
TIFF_PATTERNS = ("*.tif", "*.tiff")


@dataclass(frozen=True)
class StackLayout:
    """How many channels each role has; the stack order is input, target, seg."""

    input_nc: int = 1
    output_nc: int = 1
    seg_nc: int = 1

    @property
    def channels(self) -> int:
        return self.input_nc + self.output_nc + self.seg_nc

    def describe(self) -> str:
        def part(name: str, n: int) -> str:
            return name if n == 1 else ", ".join(f"{name}{i + 1}" for i in range(n))

        return f"[{part('input', self.input_nc)}, {part('target', self.output_nc)}, {part('seg', self.seg_nc)}]"


@dataclass
class TaganImage:
    """One training image, scaled to [-1, 1]: input (input_nc, H, W), target (output_nc, H, W), seg (seg_nc, H, W)."""

    name: str
    input: np.ndarray
    target: np.ndarray
    seg: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input.shape[1:])  # type: ignore[return-value]


# ---- scaling --------------------------------------------------------------------------------------------
def seed_8bit(image: np.ndarray) -> np.ndarray:
    """PIL ``convert('L')`` as the seed's Grayscale transform applies it: clip to [0, 255], truncate floats."""
    a = np.asarray(image)
    if np.issubdtype(a.dtype, np.floating):
        return np.floor(np.clip(a, 0.0, 255.0)).astype(np.float32)
    return np.clip(a, 0, 255).astype(np.float32)


def scale_image(image: np.ndarray, compat_8bit: bool = False) -> np.ndarray:
    """One channel to [-1, 1]: per-image min-max (default) or the seed's 8-bit path (``/127.5 - 1`` after clipping)."""
    if compat_8bit:
        return seed_8bit(image) / np.float32(127.5) - np.float32(1.0)
    a = np.asarray(image, dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    rng = hi - lo if hi > lo else 1.0
    return ((a - lo) * np.float32(2.0 / rng) - np.float32(1.0)).astype(np.float32)


def scale_seg(labels: np.ndarray, compat_8bit: bool = False) -> np.ndarray:
    """Segmentation labels to [-1, 1]: +1 where > 0 (default) or the seed's 8-bit path."""
    if compat_8bit:
        return scale_image(labels, True)
    return np.where(np.asarray(labels) > 0, np.float32(1.0), np.float32(-1.0)).astype(np.float32)


def _scale_channels(channels: np.ndarray, compat_8bit: bool, seg: bool = False) -> np.ndarray:
    fn = scale_seg if seg else scale_image
    return np.stack([fn(c, compat_8bit) for c in channels]).astype(np.float32)


# ---- reading --------------------------------------------------------------------------------------------
def _tiffs(folder: Path) -> list[Path]:
    return sorted({p for pattern in TIFF_PATTERNS for p in folder.glob(pattern)})


def _read(path: Path) -> np.ndarray:
    import tifffile

    try:
        a = tifffile.imread(path)
    except Exception as exc:  # truncated or not a TIFF
        raise InputError(f"cannot read {path} as a TIFF ({type(exc).__name__}: {exc}). Replace the file.") from None
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise InputError(f"{path} has dtype {a.dtype}; give real-valued (integer or float) images.")
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
        raise InputError(f"{path} contains NaN or Inf; remove them before training.")
    return a


def _check_sizes(image: TaganImage, path: Path) -> None:
    shapes = {a.shape[1:] for a in (image.input, image.target, image.seg)}
    if len(shapes) != 1:
        raise InputError(f"{path}: input, target and seg have different sizes {sorted(shapes)}; align them first.")


def load_stack_folder(folder: str | Path, layout: StackLayout, compat_8bit: bool = False,
                      label: str = "training") -> list[TaganImage]:
    """Read every TIFF stack of ``folder``: channels on axis 0 in the order ``layout.describe()``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"the {label} folder {folder} does not exist; put the {layout.describe()} TIFF stacks there.")
    files = _tiffs(folder)
    if not files:
        raise InputError(f"no TIFF (*.tif) in the {label} folder {folder}; add {layout.describe()} stacks.")
    out = []
    for path in files:
        a = _read(path)
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3:
            raise InputError(
                f"{path} has shape {a.shape}; a TA-GAN stack is (channels, H, W) with channels "
                f"{layout.describe()} on axis 0. Save it as a 3D (C, Y, X) TIFF."
            )
        if a.shape[0] < layout.channels:
            raise InputError(
                f"{path} has {a.shape[0]} channel(s) on axis 0, but this dataset needs {layout.channels}: "
                f"{layout.describe()} (input_nc={layout.input_nc}, output_nc={layout.output_nc}, "
                f"seg_nc={layout.seg_nc}). Stack the missing channels, or fix input_nc/output_nc/seg_nc."
            )
        if a.shape[0] > layout.channels:
            log.warning("%s has %d channels; using the first %d as %s and ignoring the rest (as the seed does)",
                        path, a.shape[0], layout.channels, layout.describe())
        i, t = layout.input_nc, layout.input_nc + layout.output_nc
        image = TaganImage(path.stem, _scale_channels(a[:i], compat_8bit), _scale_channels(a[i:t], compat_8bit),
                           _scale_channels(a[t:layout.channels], compat_8bit, seg=True))
        out.append(image)
    return out


def load_modality_folders(folder: str | Path, layout: StackLayout, dirs: dict[str, str] | None = None,
                          compat_8bit: bool = False, label: str = "training") -> list[TaganImage]:
    """Read ``folder/<input>/``, ``folder/<target>/`` and ``folder/<seg>/``; files are paired by name."""
    folder = Path(folder)
    dirs = {**DEFAULT_MODALITY_DIRS, **(dirs or {})}
    unknown = sorted(set(dirs) - set(DEFAULT_MODALITY_DIRS))
    if unknown:
        raise ConfigError(f"modality_dirs has the unknown role {unknown[0]!r}; use input, target and seg.")
    names: dict[str, dict[str, Path]] = {}
    for role, sub in dirs.items():
        d = folder / sub
        if not d.is_dir():
            raise InputError(
                f"the {label} folder {folder} has no {sub}/ sub-folder for the {role} images. A folder-per-modality "
                f"dataset holds {', '.join(f'{v}/' for v in dirs.values())} with the same file names in each."
            )
        names[role] = {p.name: p for p in _tiffs(d)}
        if not names[role]:
            raise InputError(f"no TIFF (*.tif) in {d}; put the {role} images there.")
    common = sorted(set(names["input"]) & set(names["target"]) & set(names["seg"]))
    every = set(names["input"]) | set(names["target"]) | set(names["seg"])
    if len(common) != len(every):
        lonely = sorted(every - set(common))[0]
        where = [r for r in names if lonely in names[r]]
        raise InputError(
            f"{lonely} is in {', '.join(dirs[r] + '/' for r in where)} but not in every modality folder of "
            f"{folder}; each image needs an input, a target and a seg file with the same name."
        )
    out = []
    for name in common:
        parts = []
        for role, n in (("input", layout.input_nc), ("target", layout.output_nc), ("seg", layout.seg_nc)):
            a = _read(names[role][name])
            a = a[None] if a.ndim == 2 else a
            if a.ndim != 3 or a.shape[0] != n:
                raise InputError(
                    f"{names[role][name]} has shape {a.shape}; the {role} needs {n} channel(s): (H, W) for one, "
                    f"(C, H, W) for several. Fix the file or the {role} channel count in the config."
                )
            parts.append(_scale_channels(a, compat_8bit, seg=role == "seg"))
        image = TaganImage(Path(name).stem, *parts)
        _check_sizes(image, names["input"][name])
        out.append(image)
    return out


# ---- sampling -------------------------------------------------------------------------------------------
def check_crop(images: Sequence[TaganImage], crop: int, divisor: int, label: str = "training") -> None:
    """The crop must be a multiple of the networks' divisor and fit into every image."""
    if crop % divisor:
        raise ConfigError(f"crop_size {crop} is not a multiple of {divisor}, which the networks need; "
                          f"use {max(divisor, crop // divisor * divisor)}.")
    for im in images:
        if min(im.shape) < crop:
            raise InputError(
                f"the {label} image {im.name!r} is {im.shape[0]}x{im.shape[1]}, smaller than crop_size {crop}; "
                "lower crop_size or leave the image out."
            )


def augment(arrays: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """The seed's flips and 90-degree rotation, the same for every array (C, H, W) of one sample."""
    k = int(rng.integers(0, 4))
    hflip, vflip = bool(rng.integers(0, 2)), bool(rng.integers(0, 2))
    out = []
    for a in arrays:
        if hflip:
            a = a[:, :, ::-1]
        if vflip:
            a = a[:, ::-1, :]
        out.append(np.rot90(a, k, axes=(1, 2)))
    return out


class CropSampler:
    """Random training crops (input, (target, seg)) from a seeded Generator; a BatchSource for the Trainer."""

    def __init__(self, images: Sequence[TaganImage], crop: int, seed: int, augment_data: bool = True) -> None:
        if not images:
            raise InputError("no training images; give at least one.")
        self.images = list(images)
        self.crop = int(crop)
        self.augment = augment_data
        self.rng = np.random.default_rng(seed)

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        im = self.images[int(self.rng.integers(0, len(self.images)))]
        h, w = im.shape
        y = int(self.rng.integers(0, h - self.crop + 1))
        x = int(self.rng.integers(0, w - self.crop + 1))
        cut = [a[:, y:y + self.crop, x:x + self.crop] for a in (im.input, im.target, im.seg)]
        if self.augment:
            cut = augment(cut, self.rng)
        return tuple(np.ascontiguousarray(a) for a in cut)  # type: ignore[return-value]

    def next_batch(self, batch_size: int) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        samples = [self.sample() for _ in range(batch_size)]
        x, y, s = (np.stack([smp[i] for smp in samples]) for i in range(3))
        return x, (y, s)

    def state_dict(self) -> dict[str, Any]:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["bit_generator"]


def center_crops(images: Sequence[TaganImage], crop: int) -> list[tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]]:
    """One centred crop per image (the seed's ``preprocess='center'``), each as a batch of one."""
    out = []
    for im in images:
        h, w = im.shape
        y, x = (h - crop) // 2, (w - crop) // 2
        cut = [a[None, :, y:y + crop, x:x + crop].copy() for a in (im.input, im.target, im.seg)]
        out.append((cut[0], (cut[1], cut[2])))
    return out


# ---- semi-synthetic pairs -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Degradation:
    """Confocal-like degradation of a clean image: Gaussian PSF blur, ``factor``-fold lower sampling (block mean,
    then nearest-neighbour back to the clean grid, as the seed upsamples its coarse confocal images), Poisson
    noise at ``peak`` photons for the brightest pixel and Gaussian read noise (in photons)."""

    sigma: float = 2.0
    factor: int = 2
    peak: float = 30.0
    read_noise: float = 1.0


def degrade(clean: np.ndarray, rng: np.random.Generator, spec: Degradation = Degradation()) -> np.ndarray:
    """A blurred, coarser, noisy version of ``clean`` (2D) on the same grid, in photons (float32)."""
    from scipy import ndimage

    img = np.asarray(clean, dtype=np.float64)
    lo, hi = np.percentile(img, (0.1, 99.9))
    img = np.clip((img - lo) / max(hi - lo, 1e-12), 0.0, None)
    img = ndimage.gaussian_filter(img, spec.sigma, mode="reflect")
    f = int(spec.factor)
    if f > 1:
        h, w = img.shape
        hh, ww = h // f * f, w // f * f
        coarse = img[:hh, :ww].reshape(hh // f, f, ww // f, f).mean(axis=(1, 3))
        up = np.repeat(np.repeat(coarse, f, axis=0), f, axis=1)
        img = np.pad(up, ((0, h - hh), (0, w - ww)), mode="edge")
    photons = rng.poisson(img * spec.peak).astype(np.float64)
    photons += rng.normal(0.0, spec.read_noise, size=img.shape)
    return photons.astype(np.float32)


def otsu_threshold(image: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut that maximizes the between-class variance of the histogram."""
    a = np.asarray(image, dtype=np.float64).ravel()
    hist, edges = np.histogram(a, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def structure_mask(clean: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """A binary structure mask of a clean image: light Gaussian smoothing, then Otsu's threshold (uint8 0/1)."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(np.asarray(clean, dtype=np.float64), sigma)
    return (smooth > otsu_threshold(smooth)).astype(np.uint8)
