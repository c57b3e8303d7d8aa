"""Fuzzing the five checkpoint importers with mutated and truncated copies of real-layout seed files.

Every case must end in a valid import (the run folder then loads) or a ScopertError with a message that leaves no
run folder behind; never another exception, a hang (> ``timeout`` s) or a crash of the process. Cases run in a
spawned worker process, so a segfault or a hang is seen and the worker replaced; each case is rebuilt in the
worker from (reader, seed, index), so any finding is reproduced with ``run_case``.

Mutation kinds: ``truncate`` (cut anywhere), ``bytes`` (bit flips, byte overwrites, inserted or deleted runs),
``member`` (torch: bytes of one zip member, mostly the pickle, re-zipped so the archive stays valid; HDF5: the
model_config JSON text), ``structure`` (torch: a value of the saved dict replaced, dropped or renamed, tensors
reshaped or retyped; HDF5: a JSON value, an attribute or a weight dataset replaced). The base files come from
the builders of the import tests. Used by tests/training/test_checkpoint_fuzz.py (CI) and
benchmarks/fuzz_checkpoints.py.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import time
import traceback
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

READERS = ("keras_rcan", "pytorch3dunet", "lightning_blindspot", "tagan_pth", "cnnt_pt")
KINDS = ("truncate", "bytes", "member", "structure")
SELF_TESTS = ("selftest-hang", "selftest-crash")  # readers that hang or crash, to test the harness itself
GOOD = ("imported", "refused")  # the two acceptable outcomes
MEMORY_LIMIT = 6 << 30  # address space of a worker: a mutated size field fails to allocate instead of swapping


@dataclass
class CaseResult:
    reader: str
    index: int
    kind: str
    outcome: str  # imported | refused | exception | invalid-result | half-written | hang | crash
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Campaign:
    cases: int
    seed: int
    results: list[CaseResult] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        per_reader: dict[str, Any] = {}
        for reader in sorted({r.reader for r in self.results}):
            rows = [r for r in self.results if r.reader == reader]
            per_reader[reader] = {
                "cases": len(rows),
                "outcomes": dict(Counter(r.outcome for r in rows)),
                "by_kind": {k: dict(Counter(r.outcome for r in rows if r.kind == k)) for k in KINDS},
                "slowest_s": round(max((r.seconds for r in rows), default=0.0), 3),
                "bad": [asdict(r) for r in rows if r.outcome not in GOOD],
            }
        return per_reader

    def bad(self) -> list[CaseResult]:
        return [r for r in self.results if r.outcome not in GOOD]


# ---- base files ----------------------------------------------------------------------------------------------


def build_base(reader: str, folder: Path) -> dict[str, Any]:
    """Write the valid seed-layout files of ``reader`` into ``folder``; returns what ``run_import`` needs."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if reader == "keras_rcan":
        import numpy as np

        from tests.training.test_keras_rcan_import import keras_rcan_config, write_keras_file

        config, _ = keras_rcan_config(ndim=3, shape=(4, 8, 8), channels=4, groups=2, blocks=1, reduction=2)
        path = folder / "weights_010_0.01000000.hdf5"
        write_keras_file(path, config, np.random.default_rng(0))
        return {"files": [path]}
    if reader == "pytorch3dunet":
        from tests.training.test_unet_import import MODEL_SECTION, _seed_model, _write_seed_checkpoint, _write_yaml

        section = dict(MODEL_SECTION, f_maps=4, num_levels=2, num_groups=2)
        zipped = _write_seed_checkpoint(folder / "best_checkpoint.pytorch", _seed_model(section))
        return {"files": _with_legacy(zipped), "yaml": _write_yaml(folder / "test.yaml", section, patch=(8, 16, 16))}
    if reader == "lightning_blindspot":
        from tests.training.test_blindspot_import import _shine, _write_lightning_checkpoint

        zipped = _write_lightning_checkpoint(folder / "epoch=3.ckpt", _shine({"name": "3x3_blind", "frame_num": 3,
                                                                                "filter": 8}))
        return {"files": _with_legacy(zipped)}
    if reader == "tagan_pth":
        from scopert.training.tagan import model as tagan
        from tests.training.test_tagan_import import _opt

        net = tagan.build_model({"role": "generator", "arch": "resnet_6blocks", "input_nc": 1, "output_nc": 1,
                                 "ngf": 4, "norm": "batch", "use_dropout": True})
        zipped = folder / "5_net_G.pth"
        torch.save(net.state_dict(), zipped)
        return {"files": _with_legacy(zipped), "opt": _opt(folder, ngf=4, netG="resnet_6blocks")}
    if reader == "cnnt_pt":
        from scopert.training.cnnt import model as cnnt
        from tests.training.test_cnnt_import import SEED_JSON

        seed_json = {**SEED_JSON, "blocks": [4, 8], "height": [16], "width": [16], "time": 3}
        cfg = {k: v for k, v in seed_json.items() if k in cnnt.CnntConfig.__dataclass_fields__}
        model = cnnt.build_model(cfg)
        state = dict(model.state_dict())
        for key in cnnt.seed_mask_keys(model):  # the seed's causal masks, small here (1000 x 1000 in the seed)
            state[key] = torch.tril(torch.ones(16, 16)).view(1, 1, 16, 16)
        zipped = folder / "tiny__2024_epoch-30_best.pt"
        torch.save(state, zipped)
        js = folder / "tiny__2024_epoch-30_best.json"
        js.write_text(json.dumps(seed_json))
        return {"files": _with_legacy(zipped), "json": js}
    if reader in SELF_TESTS:
        dummy = folder / "dummy.pt"
        dummy.write_bytes(b"\x80\x02")
        return {"files": [dummy]}
    raise ValueError(f"unknown reader {reader!r}; choose from {READERS}")


def _with_legacy(zipped: Path) -> list[Path]:
    """The zip file and the same object in torch's legacy (pre-1.6, TA-GAN era) format."""
    import torch

    legacy = zipped.with_name("legacy_" + zipped.name)
    torch.save(torch.load(zipped, weights_only=False), legacy, _use_new_zipfile_serialization=False)
    return [zipped, legacy]


def run_import(reader: str, base: dict[str, Any], path: Path, out: Path, variant: int) -> Any:
    """Import the (mutated) checkpoint ``path`` with ``reader`` into ``out``; returns the RunInfo."""
    if reader == "selftest-hang":
        time.sleep(3600)
    if reader == "selftest-crash":
        import os
        import signal

        os.kill(os.getpid(), signal.SIGSEGV)
    if reader == "keras_rcan":
        from scopert.training.rcan.importer import import_keras_rcan

        return import_keras_rcan(path, out)
    if reader == "pytorch3dunet":
        from scopert.training.unet.importer import import_pytorch3dunet

        return import_pytorch3dunet(path, base["yaml"], out)
    if reader == "lightning_blindspot":
        from scopert.training.blindspot.importer import import_lightning_blindspot

        return import_lightning_blindspot(path, out)
    if reader == "tagan_pth":
        from scopert.training.tagan.importer import import_tagan

        return import_tagan(path, out, opt_txt=base["opt"] if variant % 2 else None)  # opt.txt, or inferred
    from scopert.training.cnnt.importer import import_cnnt

    return import_cnnt(path, base["json"], out)


# ---- mutations -----------------------------------------------------------------------------------------------

INTERESTING = (0x00, 0xFF, 0x7F, 0x80, 0x01, 0xFE)


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.random()
        pos = rng.randrange(len(out)) if out else 0
        if op < 0.4 and out:
            out[pos] ^= 1 << rng.randrange(8)
        elif op < 0.7 and out:
            run = rng.randint(1, 8)
            fill = rng.choice(INTERESTING) if rng.random() < 0.5 else None
            out[pos:pos + run] = bytes(fill if fill is not None else rng.randrange(256) for _ in range(run))
        elif op < 0.85:
            out[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        else:
            del out[pos:pos + rng.randint(1, 64)]
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    cut = rng.randrange(len(data)) if rng.random() < 0.7 else len(data) - rng.randint(1, min(len(data), 64))
    return data[:cut]


def mutate_zip_member(data: bytes, rng: random.Random) -> bytes:
    """Mutate one member of a torch zip (the pickle 60% of the time) and write a valid archive around it."""
    with zipfile.ZipFile(io.BytesIO(data)) as zin:
        names = zin.namelist()
        pickles = [n for n in names if n.endswith("data.pkl")]
        target = pickles[0] if pickles and rng.random() < 0.6 else rng.choice(names)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zout:
            for name in names:
                member = zin.read(name)
                if name == target:
                    member = truncate(member, rng) if rng.random() < 0.3 else mutate_bytes(member, rng)
                zout.writestr(name, member)
    return buf.getvalue()


def _random_value(rng: random.Random) -> Any:
    import torch

    choice = rng.randrange(14)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([0, -1, 1, 7, 2**40, -(2**63)])
    if choice == 2:
        return rng.choice([float("nan"), float("inf"), -0.0, 1e300])
    if choice == 3:
        return rng.choice(["", "model.", "x" * 300, "conv3d_1", "\x00"])
    if choice == 4:
        return [rng.randint(0, 3) for _ in range(rng.randint(0, 4))]
    if choice == 5:
        return {}
    if choice == 6:
        return {"model.x": torch.zeros(1)}
    if choice == 7:
        return torch.tensor(rng.random())  # 0-d
    if choice == 8:
        return torch.zeros(0)
    if choice == 9:
        return torch.zeros(*[rng.randint(1, 3) for _ in range(rng.randint(1, 5))])
    if choice == 10:
        return torch.zeros(3, dtype=rng.choice([torch.int64, torch.bool, torch.complex64, torch.float16]))
    if choice == 11:
        return True
    if choice == 12:
        return (1, "a")
    return b"\x00\x01"


def _retensor(t: Any, rng: random.Random) -> Any:
    import torch

    op = rng.randrange(5)
    if op == 0 and t.dim() > 0:
        return t.flatten()
    if op == 1:
        return t.unsqueeze(0)
    if op == 2:
        return t.to(rng.choice([torch.int64, torch.bool, torch.float16, torch.complex64, torch.float64]))
    if op == 3 and t.dim() > 0 and t.shape[0] > 1:
        return t[: t.shape[0] // 2]
    return torch.full_like(t, float("nan")) if t.is_floating_point() else t


def _paths(obj: Any, prefix: tuple = (), depth: int = 0) -> list[tuple]:
    """Every (container path) into nested dicts and lists, for picking a value to mutate."""
    found = [prefix] if prefix else []
    if depth > 6:
        return found
    if isinstance(obj, dict):
        for k, v in obj.items():
            found += _paths(v, prefix + (k,), depth + 1)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += _paths(v, prefix + (i,), depth + 1)
    return found


def mutate_object(obj: Any, rng: random.Random) -> Any:
    """Replace, drop or rename values of the saved dict; reshape or retype tensors."""
    import torch

    for _ in range(rng.randint(1, 3)):
        paths = _paths(obj)
        if not paths:
            return _random_value(rng)
        path = rng.choice(paths)
        parent = obj
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        value = parent[key]
        op = rng.random()
        if isinstance(value, torch.Tensor) and op < 0.5:
            parent[key] = _retensor(value, rng)
        elif op < 0.75:
            parent[key] = _random_value(rng)
        elif isinstance(parent, dict) and op < 0.9:
            del parent[key]
        elif isinstance(parent, dict):
            parent[rng.choice(["", "model.", "module.x", str(key) + "_", 3, None])] = parent.pop(key)
        else:
            parent[key] = _random_value(rng)
    return obj


def mutate_torch_structure(path: Path, rng: random.Random, legacy: bool) -> bytes:
    import torch

    obj = mutate_object(torch.load(path, weights_only=False), rng)  # our own base file, built above
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def _mutate_json(value: Any, rng: random.Random) -> Any:
    paths = _paths(value)
    if not paths:
        return _random_json(rng)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(_paths(value) or [()])
        if not path:
            return _random_json(rng)
        parent = value
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        op = rng.random()
        if op < 0.6:
            parent[key] = _random_json(rng)
        elif isinstance(parent, dict) and op < 0.8:
            del parent[key]
        elif isinstance(parent, list) and op < 0.8:
            parent.insert(key, parent[key])  # a duplicated layer, node or number
        elif isinstance(parent, list):
            del parent[key]
        else:
            parent[key + "_x"] = parent.pop(key)
    return value


def _random_json(rng: random.Random) -> Any:
    return rng.choice([None, 0, -1, 3, 2**70, 1.5, "", "Conv3D", "relu", [], [1], [None, 0, 0, {}], {},
                       {"keras_history": ["x", 0, 0]}, True, [[["input_1", 0, 0, {}]]], [3, 3], "x" * 64])


def mutate_keras(path: Path, rng: random.Random, kind: str) -> bytes:
    """HDF5: the model_config JSON (``member``) or an attribute or weight dataset (``structure``)."""
    import h5py
    import numpy as np

    tmp = path.with_name("mutating.hdf5")
    shutil.copy(path, tmp)
    with h5py.File(tmp, "r+") as f:
        if kind == "member":
            text = f.attrs["model_config"]
            text = text.decode() if isinstance(text, bytes) else str(text)
            if rng.random() < 0.3:
                new = mutate_bytes(text.encode(), rng)
            else:
                new = json.dumps(_mutate_json(json.loads(text), rng)).encode()
            f.attrs["model_config"] = np.bytes_(new)  # fixed-length: may hold NUL bytes, as Keras 2 wrote bytes
        else:
            op = rng.randrange(6)
            groups = [n for n in f["model_weights"] if len(f["model_weights"][n].attrs.get("weight_names", [])) > 0]
            layer = f["model_weights"][rng.choice(groups)]
            names = [n.decode() if isinstance(n, bytes) else n for n in layer.attrs["weight_names"]]
            wname = rng.choice(names)
            if op == 0:
                del f.attrs[rng.choice(list(f.attrs))]
            elif op == 1:
                data = layer[wname][()]
                del layer[wname]
                layer.create_dataset(wname, data=rng.choice([np.zeros(0, np.float32), np.float32(1.0),
                                                             data.reshape(-1), data.astype(np.int8),
                                                             np.array([b"x"]), data[..., :1]]))
            elif op == 2:
                del layer[wname]
            elif op == 3:
                layer.attrs["weight_names"] = rng.choice([np.array([b"nope:0"]), np.array([], dtype="S1"),
                                                          np.array([1, 2]), np.array([n.encode() for n in names[:1]])])
            elif op == 4:
                del layer[wname]
                layer.create_group(wname)
            else:
                del f["model_weights"][rng.choice(groups)]
    data = tmp.read_bytes()
    tmp.unlink()
    return data


def make_case(reader: str, base: dict[str, Any], seed: int, index: int, folder: Path) -> tuple[str, Path, int]:
    """Write case ``index`` (deterministic in reader, seed, index); returns (kind, path, variant)."""
    rng = random.Random(f"{reader}:{seed}:{index}")
    kind = KINDS[index % len(KINDS)]
    variant = rng.randrange(len(base["files"]))
    if reader in SELF_TESTS:
        return kind, base["files"][0], 0
    source = base["files"][variant]
    data = source.read_bytes()
    if kind == "truncate":
        data = truncate(data, rng)
    elif kind == "bytes":
        data = mutate_bytes(data, rng)
    elif reader == "keras_rcan":
        data = mutate_keras(source, rng, kind)
    elif kind == "member":
        data = mutate_zip_member(data, rng) if zipfile.is_zipfile(source) else mutate_bytes(data, rng)
    else:
        data = mutate_torch_structure(source, rng, legacy=not zipfile.is_zipfile(source))
    path = folder / f"case{source.suffix}"
    path.write_bytes(data)
    return kind, path, rng.randrange(2)


# ---- running one case ----------------------------------------------------------------------------------------


def run_case(reader: str, base: dict[str, Any], seed: int, index: int, work: Path) -> CaseResult:
    """Build and run one case in this process (the worker, or a debugging session)."""
    from scopert.errors import ScopertError
    from scopert.training.common.runfolder import RUN_FILE, load_model

    case_dir = work / f"case-{index}"
    case_dir.mkdir(parents=True)
    start = time.perf_counter()
    kind = KINDS[index % len(KINDS)]
    try:
        try:
            kind, path, variant = make_case(reader, base, seed, index, case_dir)
        except Exception as exc:  # noqa: BLE001 - a bug of this harness, reported as such
            return CaseResult(reader, index, kind, "harness-error", f"{type(exc).__name__}: {exc}")
        out = case_dir / "run"
        start = time.perf_counter()
        try:
            info = run_import(reader, base, path, out, variant)
        except ScopertError as exc:
            left = [p for p in case_dir.rglob(RUN_FILE)]
            if left:
                return CaseResult(reader, index, kind, "half-written", f"{exc} | left {left[0]}",
                                  time.perf_counter() - start)
            if not str(exc).strip():
                return CaseResult(reader, index, kind, "exception", f"{type(exc).__name__} without a message",
                                  time.perf_counter() - start)
            return CaseResult(reader, index, kind, "refused", f"{type(exc).__name__}: {str(exc)[:300]}",
                              time.perf_counter() - start)
        except Exception as exc:  # noqa: BLE001 - the finding this harness exists for
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            where = f"{Path(frame.filename).name}:{frame.lineno}"
            return CaseResult(reader, index, kind, "exception",
                              f"{type(exc).__name__} at {where}: {str(exc)[:300]}", time.perf_counter() - start)
        seconds = time.perf_counter() - start
        try:
            load_model(info.folder)
        except Exception as exc:  # noqa: BLE001 - an import that wrote a run folder that does not load
            return CaseResult(reader, index, kind, "invalid-result", f"{type(exc).__name__}: {str(exc)[:300]}",
                              seconds)
        return CaseResult(reader, index, kind, "imported", "", seconds)
    finally:
        shutil.rmtree(case_dir, ignore_errors=True)


def _limit_memory() -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    except (ImportError, ValueError, OSError):
        pass


def _setup(readers: list[str], seed: int, work: str) -> Callable[[tuple[str, int]], dict]:
    """In the worker: build the base files once; each job (reader, index) then runs one case."""
    import logging

    import torch

    _limit_memory()
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    work_dir = Path(work)
    bases = {r: build_base(r, work_dir / "base" / r) for r in readers}
    return lambda job: asdict(run_case(job[0], bases[job[0]], seed, job[1], work_dir / "cases"))


def fuzz(readers: list[str] | tuple[str, ...] = READERS, cases: int = 200, seed: int = 0,
         work: Path | None = None, timeout: float = 10.0, progress: Any = None) -> Campaign:
    """Run ``cases`` cases per reader (kinds in turn) in a worker process; a hang or crash replaces the worker."""
    import tempfile

    from tests.fuzz.workers import Worker, run_jobs

    work = Path(work or tempfile.mkdtemp(prefix="scopert-fuzz-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    campaign = Campaign(cases, seed)
    worker = Worker(_setup, (list(readers), seed, str(work)))
    try:
        jobs = [(reader, index) for reader in readers for index in range(cases)]
        for (reader, index), got in run_jobs(jobs, [worker], timeout):
            if isinstance(got, dict):
                result = CaseResult(**got)
            else:
                outcome, detail, seconds = got
                result = CaseResult(reader, index, KINDS[index % len(KINDS)], outcome, detail, seconds)
            campaign.results.append(result)
            if progress is not None:
                progress(result)
    finally:
        worker.close()
        shutil.rmtree(work, ignore_errors=True)
    return campaign
