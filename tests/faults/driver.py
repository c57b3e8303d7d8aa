"""Run ``scopert`` in a child process with one fault injected at a known point (test-only; never imported by
the library).

``python tests/faults/driver.py ARGS...`` runs ``scopert ARGS...`` through ``scopert.cli.main`` after patching
one hook, chosen by ``FAULT_HOOK``:

- ``ort``: ``onnxruntime.InferenceSession.run`` (the ORT backend's tiles in apply and stream, the
  ONNX-vs-PyTorch check in export);
- ``train_step``: ``Trainer.train_step`` (one optimizer update);
- ``trt_build``: the fake TensorRT builder's ``build_serialized_network`` (``FAULT_FAKE_TRT=1`` installs
  ``tests/fakes/fake_tensorrt.py`` as ``tensorrt`` and a fixed GPU; ``FAULT_PLAN_PAD`` pads the plan so a
  file-size limit bites on the engine).

At the hook's call number ``FAULT_AT`` (1-based) the driver does ``FAULT_ACTION``:

- ``raise``: raise RuntimeError, as a backend whose device failed does;
- ``mark``: write ``FAULT_MARKER`` (so the parent knows the run is under way) and from then on sleep
  ``FAULT_SLOW`` seconds per call, so a signal from the parent lands mid-run;
- ``truncate`` / ``unlink``: cut ``FAULT_TARGET`` to half its size / delete it (the input vanishing mid-read).

Every call of the hook also rewrites ``FAULT_COUNT`` (when set) with the number of calls so far.
``FAULT_APPLY_MEMORY_LIMIT`` lowers apply's in-memory limit, so a small TIFF takes the slab-by-slab path.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class Fault:
    """The fault plan read from the environment, and the call counter of the hooked function."""

    def __init__(self) -> None:
        self.at = int(os.environ.get("FAULT_AT", "0"))
        self.action = os.environ.get("FAULT_ACTION", "")
        self.marker = os.environ.get("FAULT_MARKER")
        self.count_file = os.environ.get("FAULT_COUNT")
        self.slow = float(os.environ.get("FAULT_SLOW", "0.2"))
        self.target = os.environ.get("FAULT_TARGET")
        self.calls = 0
        self.marked = False

    def before_call(self) -> None:
        self.calls += 1
        if self.count_file:
            Path(self.count_file).write_text(str(self.calls))
        if self.marked:
            time.sleep(self.slow)
        if self.calls != self.at:
            return
        if self.action == "raise":
            raise RuntimeError(f"injected fault: the device failed at call {self.calls}")
        if self.action == "mark":
            self.marked = True
            Path(self.marker).write_text(str(self.calls))
            time.sleep(self.slow)
        elif self.action == "truncate":
            size = os.path.getsize(self.target)
            os.truncate(self.target, size // 2)
        elif self.action == "unlink":
            os.unlink(self.target)

    def wrap(self, fn):
        def hooked(*args, **kwargs):
            self.before_call()
            return fn(*args, **kwargs)

        return hooked


def install_fake_tensorrt(pad: int) -> None:
    """The fake tensorrt module under its real name, and a GPU probe that answers without CUDA."""
    from scopert.export import trt_builder
    from scopert.runtime.backends.engine_key import GpuInfo
    from tests.fakes.fake_tensorrt import make_fake_tensorrt

    trt = make_fake_tensorrt("10.16.1.11")
    if pad:
        build = trt.Builder.build_serialized_network

        def padded(self, network, config):
            plan = build(self, network, config)
            return None if plan is None else bytes(plan) + b" " * pad  # JSON ignores trailing spaces

        trt.Builder.build_serialized_network = padded
    sys.modules["tensorrt"] = trt
    trt_builder.probe_gpu = lambda version, cuda=None: GpuInfo("NVIDIA H100 80GB HBM3", "9.0", version)


def main() -> None:
    sys.path.insert(0, str(REPO))
    fault = Fault()
    hook = os.environ.get("FAULT_HOOK", "")
    if os.environ.get("FAULT_FAKE_TRT"):
        install_fake_tensorrt(int(os.environ.get("FAULT_PLAN_PAD", "0")))
    if os.environ.get("FAULT_APPLY_MEMORY_LIMIT"):  # make apply read a small TIFF slab by slab, as a large one
        from scopert.runtime import apply

        apply.IN_MEMORY_BYTES = int(os.environ["FAULT_APPLY_MEMORY_LIMIT"])
    if hook == "ort":
        import onnxruntime

        onnxruntime.InferenceSession.run = fault.wrap(onnxruntime.InferenceSession.run)
    elif hook == "train_step":
        from scopert.training.common.trainer import Trainer

        Trainer.train_step = fault.wrap(Trainer.train_step)
    elif hook == "trt_build":
        trt = sys.modules["tensorrt"]
        trt.Builder.build_serialized_network = fault.wrap(trt.Builder.build_serialized_network)
    elif hook:
        raise SystemExit(f"driver: unknown FAULT_HOOK {hook!r}")
    from scopert.cli import main as scopert_main

    sys.argv = ["scopert", *sys.argv[1:]]
    scopert_main()


if __name__ == "__main__":
    main()
