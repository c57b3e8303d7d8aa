"""The measured CPU choice: ``--backend auto`` on a CPU times ONNX Runtime and OpenVINO (f32) on a few tiles
of the planned size and keeps the faster one, because neither wins everywhere (OpenVINO is far ahead on 3D
convolutions; ONNX Runtime is ahead on some 2D+t transformer nets such as CNNT).

The tiles timed are the planned tile (the card's default) shrunk to at most ``PROBE_VOXELS``: a large 3D
tile takes tens of seconds per run on two cores, and the engines' ratio hardly depends on the tile's size.
Precision is decided first (``selection.precision``): a run that will use bf16 or INT8 opens OpenVINO
directly and times nothing; only an f32 run asks for the measured choice.

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


from scopert.runtime.timing import REPEATS, time_engines  # noqa: F401 - REPEATS: the measurement's repeats

log = logging.getLogger(__name__)

CACHE_NAME = "cpu_choice.json"


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


def write_cache(path: Path, records: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"records": records}, indent=2))
    os.replace(tmp, path)


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
        write_cache(cache, records)
    except OSError as exc:
        log.warning("could not record the backend measurement in %s: %s", cache, exc)
    return MeasuredChoice(pick, seconds, reused=False, stale=stale, cache=str(cache))


def open_measured(path: str | Path, planner: Any, threads: int | None = None, why: str = "") -> Any | None:
    """The faster of ONNX Runtime and OpenVINO f32 on this model's nominal tile (``Planner.nominal_batch``),
    opened; or None when there is nothing to measure (ONNX Runtime missing, OpenVINO cannot run the tile). A cached
    choice opens only the engine it names; a measurement opens both and closes the slower."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    from scopert.checksum import sha256_file
    from scopert.errors import ScopertError
    from scopert.runtime.backends.openvino import OpenVinoBackend
    from scopert.runtime.backends.ort import OrtBackend
    from scopert.runtime.cpu import cpu_caps

    path = Path(path)
    try:
        batch = planner.nominal_batch()
    except (ScopertError, ValueError, KeyError) as exc:
        log.debug("backend auto: no measured choice for %s (%s)", path.name, exc)
        return None
    n_threads = int(threads or os.cpu_count() or 1)
    key = ChoiceKey(sha256_file(path), cpu_caps(ask_openvino=False).key, engine_versions(), n_threads,
                    tuple(batch.shape))
    openers = {"ort": lambda: OrtBackend(path, device="cpu", threads=threads),
               "openvino": lambda: OpenVinoBackend(path, threads=threads, precision="f32")}
    engines: dict[str, Any] = {}

    def measure() -> dict[str, float]:
        for name, open_engine in openers.items():
            engines[name] = open_engine()
        return time_engines({name: (lambda b=b: b.run(batch)) for name, b in engines.items()})

    try:
        picked = decide(key, cache_path(path), measure)
    except Exception as exc:  # noqa: BLE001 - an engine refuses the nominal tile (OpenVINO cannot compile it, a
        # time-window layout the plan does not fit): no measured choice; the ordered choice and its fallback decide
        log.info("backend auto: no measured choice for %s (%s: %s)", path.name, type(exc).__name__,
                 str(exc).splitlines()[0][:200] if str(exc) else "")
        for engine in engines.values():
            engine.close()
        return None
    for name, engine in engines.items():
        if name != picked.backend:
            engine.close()
    backend = engines.get(picked.backend) or openers[picked.backend]()
    backend.info.reason = f"{backend.info.reason}; chosen because: {picked.reason}" + (f" ({why})" if why else "")
    backend.measured_choice = asdict(picked) | {"key": key.full}
    log.info("backend auto: measured %s on %s: %s", ", ".join(sorted(picked.seconds)), path.name, picked.reason)
    return backend
