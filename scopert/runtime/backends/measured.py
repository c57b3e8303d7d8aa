"""The measured CPU choice: ``--backend auto`` on a CPU times ONNX Runtime and OpenVINO (f32) on a few tiles
of the planned size and keeps the faster one, because neither wins everywhere (OpenVINO is far ahead on 3D
convolutions; ONNX Runtime is ahead on some 2D+t transformer nets such as CNNT).

The tiles timed are the planned tile (the card's default) shrunk to at most ``PROBE_VOXELS``: a large 3D
tile takes tens of seconds per run on two cores, and the engines' ratio hardly depends on the tile's size.
A run that asked for another precision than f32 gets ONNX Runtime as a stand-in, marked
``measure_pending``: the precision choice (``bf16_gate.apply_precision``) then swaps in OpenVINO for bf16 or
INT8 without timing f32 engines it would not use, or asks for the measured f32 choice.

The result is cached in ``engines/cpu_choice.json`` beside the model (the model's own folder when it already
is an ``engines/`` folder), keyed by the model's sha256, the CPU (model name and vector flags), both engine
versions, the thread count and the tile shape, and reused by every later run. A record for the same model
and CPU made with other engine versions is stale: it is measured again, and the log says so.

Imports numpy and the standard library; the engines only through their backends. Never torch or onnx.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from scopert.runtime.tile_cost import nominal_tile
from scopert.runtime.tiling import round_up

log = logging.getLogger(__name__)

CACHE_NAME = "cpu_choice.json"
REPEATS = 3
SLOW_TILE_S = 1.0  # seconds per tile above which one timed round is enough
PROBE_VOXELS = 1 << 18  # the measured tile's size at most (e.g. 16x128x128, 512x512)


@dataclass(frozen=True)
class ChoiceKey:
    """What a measurement depends on."""

    model_sha256: str
    cpu: str
    versions: dict[str, str] = field(default_factory=dict)
    threads: int = 1
    input_shape: tuple[int, ...] = ()

    @property
    def where(self) -> str:
        """The part that must match for a record to describe this model on this CPU at this shape."""
        return f"{self.model_sha256}|{self.cpu}|{self.threads}|{'x'.join(map(str, self.input_shape))}"

    @property
    def full(self) -> str:
        return self.where + "|" + ",".join(f"{k}={v}" for k, v in sorted(self.versions.items()))


@dataclass
class MeasuredChoice:
    """The pick, the seconds per batch it rests on, and whether it came from the cache."""

    backend: str
    seconds: dict[str, float]
    reused: bool
    stale: str = ""
    cache: str = ""

    @property
    def reason(self) -> str:
        timing = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in sorted(self.seconds.items()))
        source = "cached measurement" if self.reused else "measured now"
        stale = f"; {self.stale}" if self.stale else ""
        return f"fastest CPU engine for this model by {source} ({timing} per tile){stale}"


def cache_path(model_path: str | Path) -> Path:
    model_path = Path(model_path)
    folder = model_path.parent if model_path.parent.name == "engines" else model_path.parent / "engines"
    return folder / CACHE_NAME


def engine_versions() -> dict[str, str]:
    """Versions of the CPU engines installed (only those that are)."""
    out = {}
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    if importlib.util.find_spec("openvino") is not None:
        import openvino

        out["openvino"] = openvino.get_version()
    return out


def read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
        return data.get("records", {}) if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, records: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"records": records}, indent=2))
    os.replace(tmp, path)


def time_engines(runners: dict[str, Callable[[], Any]], repeats: int = REPEATS) -> dict[str, float]:
    """Best seconds of each runner after one warm-up, the runners alternating within each repeat."""
    best = {name: float("inf") for name in runners}
    for name, run in runners.items():  # warm-up (compile, allocate); its time bounds the repeats
        t0 = time.perf_counter()
        run()
        best[name] = time.perf_counter() - t0
    if max(best.values()) > SLOW_TILE_S:  # a slow tile: two timed rounds keep the measurement short (one round
        repeats = min(repeats, 2)  # let a neighbour's burst flip a 10% difference)
    best = {name: float("inf") for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def decide(key: ChoiceKey, cache: Path, measure: Callable[[], dict[str, float]]) -> MeasuredChoice:
    """The cached pick for ``key``, or a new measurement (recorded); a record from other engine versions is
    re-measured and replaced."""
    records = read_cache(cache)
    hit = records.get(key.full)
    if hit is not None:
        return MeasuredChoice(hit["backend"], dict(hit["seconds"]), reused=True, cache=str(cache))
    stale = ""
    for full, rec in list(records.items()):
        if rec.get("where") == key.where:
            changed = [f"{k} {rec.get('versions', {}).get(k)} -> {v}" for k, v in key.versions.items()
                       if rec.get("versions", {}).get(k) != v]
            stale = f"re-measured: engine version changed ({', '.join(changed) or 'engines differ'})"
            log.info("backend auto: %s", stale)
            del records[full]
    seconds = measure()
    pick = min(seconds, key=seconds.get)
    records[key.full] = {"where": key.where, "backend": pick, "seconds": {k: round(v, 5) for k, v in seconds.items()},
                         "versions": dict(key.versions), "cpu": key.cpu, "threads": key.threads,
                         "input_shape": list(key.input_shape), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        _write_cache(cache, records)
    except OSError as exc:
        log.warning("could not record the backend measurement in %s: %s", cache, exc)
    return MeasuredChoice(pick, seconds, reused=False, stale=stale, cache=str(cache))


def probe_tile(tile: dict[str, int], floor: dict[str, int], divisor: dict[str, int],
               limit: int = PROBE_VOXELS) -> dict[str, int]:
    """``tile`` shrunk to at most ``limit`` voxels by halving its largest axis, each axis kept a multiple of its
    divisor and at least ``floor`` (the smallest tile the halo allows)."""
    tile = dict(tile)

    def halved(ax: str) -> int:
        return round_up(max(tile[ax] // 2, floor.get(ax, 1)), divisor.get(ax, 1))

    while int(np.prod(list(tile.values()))) > limit:
        shrinkable = [ax for ax in tile if halved(ax) < tile[ax]]
        if not shrinkable:
            break
        ax = max(shrinkable, key=lambda a: tile[a])
        tile[ax] = halved(ax)
    return tile


def _planned_batch(model: Any) -> np.ndarray:
    """One nominal tile (the card's tile, or 32 along z and 256 along y/x, at least 4x the halo; shrunk to
    ``PROBE_VOXELS``), in the model's layout: the engines are compared on a tile of a typical run's size, the
    same for every input, so the measurement is cached once per model."""
    card = model.card
    tiled = model.in_layout.tiled
    tile = {ax: round_up(int(card.input.fixed[ax]), card.input.divisor.get(ax, 1)) if ax in card.input.fixed
            else nominal_tile(card, ax) for ax in tiled}
    fixed = {"t"} if model.in_layout.channel == "t" or "t" in tiled and card.input.time_window else set()
    floor = {ax: (tile[ax] if ax in fixed else 4 * card.halo.get(ax, 0) + card.input.divisor.get(ax, 1)) for ax in tile}
    tile = probe_tile(tile, floor, card.input.divisor)
    # the model's channel axis: its channels, or the frame window of a 'btyx' model whose frames are its channels
    channels = (card.input.time_window or 1) if model.in_layout.channel == "t" else (
        card.input.channels if "c" in card.input.axes else 1)
    x = np.random.default_rng(0).uniform(0, 1, (1, channels) + tuple(tile[ax] for ax in tiled)).astype(np.float32)
    return model.in_layout.to_model(x)


def open_measured(path: str | Path, threads: int | None = None, why: str = "", precision: str = "f32",
                  ort_backend: Any | None = None) -> Any | None:
    """The faster of ONNX Runtime and OpenVINO f32 on this model's planned tile (cached), opened; or None when
    there is nothing to measure (ONNX Runtime missing, no card to plan a tile from, OpenVINO cannot run it).
    For a ``precision`` other than f32, ONNX Runtime marked ``measure_pending`` (see the module's note); that
    stand-in, passed back as ``ort_backend``, is the ONNX Runtime session the measurement then uses."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    from scopert.card import card_from_metadata
    from scopert.checksum import sha256_file
    from scopert.errors import ScopertError
    from scopert.runtime.backends.ort import OrtBackend
    from scopert.runtime.bf16_gate import cpu_caps
    from scopert.runtime.model import Model

    path = Path(path)
    ort_backend = ort_backend or OrtBackend(path, device="cpu", threads=threads)
    ort_backend.measure_pending = False
    try:
        card = card_from_metadata(ort_backend.metadata, where=f"{path.name}:metadata")
        if card is not None and precision not in ("f32", "fp32"):
            ort_backend.measure_pending = True
            return ort_backend
        batch = None if card is None else _planned_batch(Model(ort_backend, card, path))
    except (ScopertError, ValueError, KeyError) as exc:
        log.debug("backend auto: no measured choice for %s (%s)", path.name, exc)
        batch = None
    if batch is None:
        ort_backend.close()
        return None
    n_threads = int(threads or os.cpu_count() or 1)
    key = ChoiceKey(sha256_file(path), cpu_caps(ask_openvino=False).key, engine_versions(), n_threads,
                    tuple(batch.shape))
    engines: dict[str, Any] = {"ort": ort_backend}

    def measure() -> dict[str, float]:
        from scopert.runtime.backends.openvino import OpenVinoBackend

        engines["openvino"] = OpenVinoBackend(path, threads=threads, precision="f32")
        return time_engines({name: (lambda b=b: b.run(batch)) for name, b in engines.items()})

    try:
        picked = decide(key, cache_path(path), measure)
    except Exception as exc:  # noqa: BLE001 - an engine refuses the planned tile (OpenVINO cannot compile it, a
        # time-window layout the plan does not fit): no measured choice; the ordered choice and its fallback decide
        log.info("backend auto: no measured choice for %s (%s: %s)", path.name, type(exc).__name__,
                 str(exc).splitlines()[0][:200] if str(exc) else "")
        for engine in engines.values():
            engine.close()
        return None
    if picked.backend == "openvino":
        ort_backend.close()
        backend = engines.get("openvino")
        if backend is None:
            from scopert.runtime.backends.openvino import OpenVinoBackend

            backend = OpenVinoBackend(path, threads=threads, precision="f32")
    else:
        backend = ort_backend
        if "openvino" in engines:
            engines["openvino"].close()
    backend.info.reason = f"{backend.info.reason}; chosen because: {picked.reason}" + (f" ({why})" if why else "")
    backend.measured_choice = asdict(picked) | {"key": key.full}
    log.info("backend auto: measured %s on %s: %s", ", ".join(sorted(picked.seconds)), path.name, picked.reason)
    return backend
