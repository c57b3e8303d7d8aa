"""A generic supervised trainer that every family reuses: epochs of steps, validation, checkpoints, resume.

Per epoch it trains ``steps_per_epoch`` batches from a ``BatchSource``, validates on the batches of
``val_batches()`` (when given), steps the LR scheduler, writes ``checkpoints/best.pt`` when the monitored loss
(validation loss, or the training loss without validation data, as 3D-RCAN does) improves, always writes
``checkpoints/last.pt`` (model, optimizer, scheduler, epoch, RNG states) and appends a row to ``metrics.csv``
and redraws ``loss.png``. ``fit(resume=True)`` continues a run folder at the epoch after ``last.pt``, with the
same RNG states, so an interrupted run ends where an uninterrupted one would. A tqdm bar on stderr shows progress
when stderr is a terminal (``scopert.progress``); in pipes and log files a few log lines replace it; everything
else is logged. Families with an unusual update (GANs) override ``train_step``.

Must not import ``scopert.export`` or ``scopert.runtime``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import numpy as np
import torch

from scopert.errors import OutputError, RunError
from scopert.training.common.runfolder import CHECKPOINT_DIR, atomic_write_bytes, load_run_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.csv"
PLOT_FILE = "loss.png"

Batch = tuple[Any, Any]
MetricFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class BatchSource(Protocol):
    """Where training batches come from; its RNG state is saved in ``last.pt`` for an exact resume."""

    def next_batch(self, batch_size: int) -> Batch: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainSettings:
    """How long and how to train. ``time_limit_minutes`` ends the run after the step that crosses it
    (the epoch is then validated and checkpointed as usual)."""

    epochs: int
    steps_per_epoch: int
    batch_size: int = 1
    time_limit_minutes: float | None = None
    progress: bool = True
    device: str | None = None


@dataclass
class TrainResult:
    first_epoch: int
    last_epoch: int
    best_epoch: int | None
    best_loss: float
    monitor: str
    stopped_by_time_limit: bool
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def keras_adam(params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam with Keras 2.2.4's defaults (betas .9/.999, eps 1e-7), as 3D-RCAN trains."""
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-7)


def staircase_decay(optimizer: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.StepLR:
    """3D-RCAN's ``staircase_exponential_decay(epochs // 4)``: halve the LR at nonzero multiples of epochs//4.

    Stepped once per epoch; with 300 epochs the LR halves before (0-based) epochs 75, 150 and 225. Fewer than 4
    epochs gives epochs//4 == 0, where the seed would divide by zero; here the LR then stays constant.
    """
    n = epochs // 4
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=n if n > 0 else 2**31 - 1, gamma=0.5)


class Trainer:
    """Trains ``model`` into ``run_folder`` (see the module docstring)."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: MetricFn,
        run_folder: str | os.PathLike,
        train_source: BatchSource,
        settings: TrainSettings,
        *,
        metrics: dict[str, MetricFn] | None = None,
        val_batches: Callable[[], Iterable[Batch]] | None = None,
        scheduler: Any | None = None,
        checkpoint_extra: dict[str, Any] | None = None,
    ) -> None:
        self.device = torch.device(settings.device) if settings.device else default_device()
        self.model = model.to(self.device)
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.metrics = dict(metrics or {})
        self.folder = Path(run_folder)
        self.train_source = train_source
        self.val_batches = val_batches
        self.scheduler = scheduler
        self.settings = settings
        self.checkpoint_extra = dict(checkpoint_extra or {})
        self.monitor = "val_loss" if val_batches is not None else "loss"

    # ---- paths ---------------------------------------------------------------------------------------
    @property
    def best_path(self) -> Path:
        return self.folder / CHECKPOINT_DIR / "best.pt"

    @property
    def last_path(self) -> Path:
        return self.folder / CHECKPOINT_DIR / "last.pt"

    # ---- one step ------------------------------------------------------------------------------------
    def to_tensor(self, a: Any) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a
        return t.to(self.device, dtype=torch.float32)

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One optimizer update; returns the loss and metrics of this batch."""
        x, y = (self.to_tensor(a) for a in batch)
        self.optimizer.zero_grad(set_to_none=True)
        pred = self.model(x)
        loss = self.loss_fn(pred, y)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            values = {"loss": float(loss.detach())}
            values.update({k: float(fn(pred.detach(), y)) for k, fn in self.metrics.items()})
        return values

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean loss and metrics over ``val_batches()``, keys prefixed ``val_``."""
        assert self.val_batches is not None
        self.model.eval()
        sums: dict[str, float] = {}
        n = 0
        for batch in self.val_batches():
            x, y = (self.to_tensor(a) for a in batch)
            pred = self.model(x)
            values = {"loss": float(self.loss_fn(pred, y))}
            values.update({k: float(fn(pred, y)) for k, fn in self.metrics.items()})
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
        self.model.train()
        return {f"val_{k}": v / max(n, 1) for k, v in sums.items()}

    # ---- the loop ------------------------------------------------------------------------------------
    def fit(self, resume: bool = True) -> TrainResult:
        """Train up to ``settings.epochs``; with ``resume`` continue after the epoch stored in ``last.pt``."""
        from scopert.progress import progress_bar

        s = self.settings
        start = time.monotonic()
        first_epoch, best_loss, best_epoch = 1, math.inf, None
        if self.last_path.exists():
            if not resume:
                raise OutputError(
                    f"{self.folder} already holds a training run ({self.last_path.name}). Resume it, or choose "
                    "a new output folder (or delete this one) to start over."
                )
            state = self._load_last()
            first_epoch = int(state["epoch"]) + 1
            best_loss = float(state.get("best_loss", math.inf))
            best_epoch = state.get("best_epoch")
            log.info("resuming %s at epoch %d of %d", self.folder, first_epoch, s.epochs)
        history = self._read_history(keep_before=first_epoch)
        self._write_history(history)
        self.model.train()
        stopped = False
        epoch = first_epoch - 1
        for epoch in range(first_epoch, s.epochs + 1):
            lr = float(self.optimizer.param_groups[0]["lr"])
            sums: dict[str, float] = {}
            steps_done = 0
            # a live bar on a terminal; in a pipe or a log file a line per quarter epoch at most (no '\r' flood)
            bar = progress_bar(s.steps_per_epoch, f"epoch {epoch}/{s.epochs}", enabled=s.progress,
                               stream=sys.stderr, logger=log, dynamic_ncols=True, leave=False)
            try:
                for step in range(s.steps_per_epoch):
                    values = self.train_step(self.train_source.next_batch(s.batch_size))
                    if not math.isfinite(values["loss"]):
                        raise RunError(
                            f"training diverged: the loss became {values['loss']} at epoch {epoch}, step {step + 1}. "
                            "Lower initial_learning_rate, check the data for outliers, or resume from last.pt."
                        )
                    for k, v in values.items():
                        sums[k] = sums.get(k, 0.0) + v
                    steps_done += 1
                    bar.update(1)
                    bar.set_postfix({k: f"{v / steps_done:.4g}" for k, v in sums.items()})
                    if s.time_limit_minutes is not None and time.monotonic() - start >= 60.0 * s.time_limit_minutes:
                        stopped = True
                        break
            finally:
                bar.close()
            row: dict[str, float] = {"epoch": epoch, "lr": lr, "steps": steps_done}
            row.update({k: v / steps_done for k, v in sums.items()})
            if self.val_batches is not None:
                row.update(self.validate())
            row["seconds"] = round(time.monotonic() - start, 3)
            if self.scheduler is not None:
                self.scheduler.step()
            current = row[self.monitor]
            if current < best_loss:
                best_loss, best_epoch = current, epoch
                save_checkpoint(self.best_path, {
                    "model_state_dict": self.model.state_dict(), "epoch": epoch, "val_loss": current,
                    "monitor": self.monitor, **self.checkpoint_extra,
                })
            history.append(row)
            self._write_history(history)
            self._save_last(epoch, best_loss, best_epoch)
            self._plot(history)
            log.info("epoch %d/%d: %s", epoch, s.epochs,
                     ", ".join(f"{k}={v:.5g}" for k, v in row.items() if k not in ("epoch", "steps")))
            if stopped:
                log.info("time limit of %g minutes reached after epoch %d; stopping (resume to continue).",
                         s.time_limit_minutes, epoch)
                break
        return TrainResult(first_epoch, epoch, best_epoch, best_loss, self.monitor, stopped,
                           time.monotonic() - start, history)

    # ---- checkpoints -----------------------------------------------------------------------------------
    def _save_last(self, epoch: int, best_loss: float, best_epoch: int | None) -> None:
        rng = {"torch": torch.get_rng_state(), "train_source": self.train_source.state_dict()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        save_checkpoint(self.last_path, {
            "model_state_dict": self.model.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "scheduler_state_dict": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epoch": epoch, "best_loss": best_loss, "best_epoch": best_epoch, "monitor": self.monitor,
            "rng": rng, **self.checkpoint_extra,
        })

    def _load_last(self) -> dict[str, Any]:
        state = load_run_checkpoint(self.last_path)  # never runs pickled code; CheckpointError names the file
        try:
            self.model.load_state_dict(state["model_state_dict"])
            self.optimizer.load_state_dict(state["optimizer_state_dict"])
            if self.scheduler is not None and state.get("scheduler_state_dict") is not None:
                self.scheduler.load_state_dict(state["scheduler_state_dict"])
        except (RuntimeError, KeyError, ValueError, EOFError) as exc:
            raise OutputError(
                f"cannot resume from {self.last_path} ({exc}). It was written by a different model or config; "
                "use a new output folder, or delete this one to start over."
            ) from None
        rng = state.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        if "train_source" in rng:
            self.train_source.load_state_dict(rng["train_source"])
        return state

    # ---- metrics.csv and loss.png ------------------------------------------------------------------------
    def _read_history(self, keep_before: int) -> list[dict[str, float]]:
        path = self.folder / METRICS_FILE
        if keep_before <= 1 or not path.exists():
            return []
        with open(path, newline="") as fh:
            rows = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(fh)]
        return [r for r in rows if r.get("epoch", math.inf) < keep_before]

    def _write_history(self, history: list[dict[str, float]]) -> None:
        """Rewrite metrics.csv whole (atomically), so a resumed run never holds rows of a lost epoch."""
        self.folder.mkdir(parents=True, exist_ok=True)
        columns: list[str] = []
        for row in history:
            columns += [k for k in row if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns or ["epoch"], lineterminator="\n")
        writer.writeheader()
        for row in history:
            writer.writerow({k: (int(v) if k in ("epoch", "steps") else v) for k, v in row.items()})
        atomic_write_bytes(self.folder / METRICS_FILE, buf.getvalue().encode())

    def _plot(self, history: list[dict[str, float]]) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        epochs = [r["epoch"] for r in history]
        for key in ("loss", "val_loss"):
            points = [(e, r[key]) for e, r in zip(epochs, history) if key in r]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_title(self.folder.name)
        ax.grid(True, alpha=0.3)
        ax.legend()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        atomic_write_bytes(self.folder / PLOT_FILE, buf.getvalue())
