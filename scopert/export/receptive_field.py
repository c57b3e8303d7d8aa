"""Measure a network's receptive field (the halo that tiling needs) and detect per-tile global operations.

Method: the gradient of one output voxel with respect to the input, in float64, on random positive
backgrounds (so that ReLUs are alive). For a purely local network this gradient is *exactly* zero
outside the receptive field (backpropagating zeros through convolutions, pooling and interpolation
gives exact zeros), so the halo is the exact support, with no threshold to tune. A global operation
(global average pooling, instance/group norm over the tile) makes the gradient non-zero everywhere:
the support then reaches the probe border however long the probe grows. For such a network the
halo is the radius where the response stands clearly above the far-field level (the ``threshold``
reported), and ``global_dependency`` is set.

Each tiled axis is probed separately with a probe that is long along that axis and keeps the
caller's (small) size along the others: the extreme path along the axis runs through the centre
line, so the measured extent is exact, and the cost grows linearly, not with the volume.

Imports torch and numpy only; must not import onnx, scopert.runtime or scopert.training.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scopert.errors import ConfigError, RunError

log = logging.getLogger(__name__)

TILED_AXES = "zyx"
# A response below this fraction of the peak is treated as numerically zero (exact zeros are the norm).
ZERO_FLOOR = 1e-30
# In the global case the local halo ends where the response falls below FAR_FIELD_FACTOR x the far field.
FAR_FIELD_FACTOR = 2.0


@dataclass
class RFResult:
    """What ``measure_receptive_field`` found.

    ``halo``: radius in input voxels per tiled axis. ``global_dependency``: the centre output depends on
    input voxels arbitrarily far away (the model is not tile-invariant). ``threshold``: the response level,
    relative to the peak, that bounds the halo (0.0: the exact support, used when there is no global
    dependency). ``far_field``: per axis, the far-field response relative to the peak (0.0 when local).
    ``probe_shapes``: the last probe shape per axis.
    """

    halo: dict[str, int]
    global_dependency: bool
    threshold: float
    global_axes: str = ""
    far_field: dict[str, float] = field(default_factory=dict)
    probe_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    method: str = "impulse"

    @property
    def tile_invariant(self) -> bool:
        return not self.global_dependency

    def to_dict(self) -> dict[str, Any]:
        return {
            "halo": dict(self.halo),
            "global_dependency": self.global_dependency,
            "global_axes": self.global_axes,
            "threshold": self.threshold,
            "far_field": dict(self.far_field),
            "probe_shapes": {a: list(s) for a, s in self.probe_shapes.items()},
            "method": self.method,
        }


def declared_receptive_field(halo: dict[str, Any], axes: str) -> RFResult:
    """The RFResult for a halo declared by the architecture (the export module's ``halo_hint`` attribute).

    Used instead of the impulse probe for networks whose probe is too slow (SHINE: dilated rings reach ~160 px, so
    the probe must be > 320 px long with 64 output phases, which took minutes on a CPU). The family's own tests
    must prove the declared value against ``measure_receptive_field`` on a cheap copy of the architecture.
    """
    tiled = [a for a in axes if a in TILED_AXES]
    if not isinstance(halo, dict) or sorted(halo) != sorted(tiled):
        raise ConfigError(f"halo_hint {halo!r} must give one radius per tiled axis {''.join(tiled)!r}.")
    clean = {}
    for ax in tiled:
        v = halo[ax]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ConfigError(f"halo_hint[{ax!r}] must be an integer >= 0, got {v!r}.")
        clean[ax] = int(v)
    return RFResult(halo=clean, global_dependency=False, threshold=0.0, method="declared")


def measure_halo(module: Any, input_shape: tuple[int, ...], axes: str, **kwargs: Any) -> dict[str, int]:
    """The halo per tiled axis (see ``measure_receptive_field`` for the arguments)."""
    return measure_receptive_field(module, input_shape, axes, **kwargs).halo


def measure_receptive_field(
    module: Any,
    input_shape: tuple[int, ...],
    axes: str,
    *,
    output_axes: str | None = None,
    divisor: dict[str, int] | None = None,
    max_length: int = 512,
    max_voxels: int = 1 << 16,
    seed: int = 0,
) -> RFResult:
    """Measure the halo of ``module`` along each tiled axis (z, y, x) of ``axes``.

    ``input_shape`` is the starting probe, one size per letter of ``axes`` (batch included, use 1); its
    sizes along the other axes are kept while one axis grows, so small sizes keep the measurement cheap.
    Sizes must satisfy the model's divisor. A probe axis doubles until the response no longer reaches its
    border, up to ``max_length`` voxels or ``max_voxels`` voxels in the probe; a response that still reaches
    the border then is reported as a global dependency. ``divisor`` (per axis) makes the probe measure every
    output phase of models with down-sampling, whose receptive field depends on the position mod divisor.
    """
    import torch

    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != len(axes):
        raise ConfigError(
            f"probe shape {input_shape} has {len(input_shape)} axes but axes is {axes!r}; give one size per axis."
        )
    if any(s < 1 for s in input_shape):
        raise ConfigError(f"probe shape {input_shape} has a size < 1; every axis needs at least one voxel.")
    tiled = [a for a in axes if a in TILED_AXES]
    if not tiled:
        raise ConfigError(f"axes {axes!r} has no tiled axis (z, y or x); nothing to measure.")
    divisor = {a: int(d) for a, d in (divisor or {}).items()}

    probe_module = copy.deepcopy(module).to(torch.float64).eval()
    for p in probe_module.parameters():
        p.requires_grad_(False)

    halo: dict[str, int] = {}
    far: dict[str, float] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    thresholds: list[float] = []
    global_axes = ""
    for ax in tiled:
        res = _measure_axis(probe_module, input_shape, axes, output_axes, ax, divisor.get(ax, 1),
                            max_length, max_voxels, seed)
        halo[ax], far[ax], shapes[ax] = res["halo"], res["far_field"], res["shape"]
        if res["global"]:
            global_axes += ax
            thresholds.append(res["threshold"])
    if global_axes:
        log.info("global dependency along %s: halo %s is the local part above the far field", global_axes, halo)
    return RFResult(
        halo=halo,
        global_dependency=bool(global_axes),
        threshold=max(thresholds) if thresholds else 0.0,
        global_axes=global_axes,
        far_field=far,
        probe_shapes=shapes,
    )


def _measure_axis(module: Any, base: tuple[int, ...], axes: str, output_axes: str | None, ax: str, div: int,
                  max_length: int, max_voxels: int, seed: int) -> dict[str, Any]:
    """Grow the probe along ``ax`` until the support of the response stays inside it (or the cap is hit).

    The growth uses one output phase; once the support fits, every phase mod ``div`` is measured at that
    length (a phase may reach further), growing again if one of them reaches the border.
    """
    i = axes.index(ax)
    step = max(div, 1)
    length = -(-max(base[i], 3) // step) * step
    others = math.prod(s for j, s in enumerate(base) if axes[j] in TILED_AXES and j != i)
    cap = min(max_length, max(max_voxels // max(others, 1), step))
    cap = max(length, cap // step * step)
    # Grow cheaply (one background, one phase); confirm at the final length with both backgrounds and
    # every phase, and grow again if that reaches further.
    full = False
    while True:
        shape = tuple(length if j == i else s for j, s in enumerate(base))
        phases = list(range(step)) if full else [0]
        backgrounds = BACKGROUNDS if full else BACKGROUNDS[:1]
        try:
            profile, border = _profile(module, shape, axes, output_axes, ax, div, phases, backgrounds, seed)
        except _NoResponse:
            # a tiny probe can leave every path dead (a 3-level U-Net's 4^3 probe has a 1-voxel bottleneck):
            # try both backgrounds, then a longer probe, before calling the output independent of the input
            if not full:
                full = True
                continue
            if length >= cap:
                raise RunError(f"the receptive-field probe {shape} found no response of the centre output to the "
                               "input: the output does not depend on the input there.") from None
            length, full = min(cap, length * 2), False
            continue
        support = np.nonzero(profile > ZERO_FLOOR)[0]
        reach = int(support.max()) if support.size else 0
        if reach < border:
            if not full:
                full = True
                continue
            return {"halo": reach, "global": False, "threshold": 0.0, "far_field": 0.0, "shape": shape}
        if length >= cap:
            if not full:
                full = True
                continue
            break
        length, full = min(cap, length * 2), False
    # The response reaches the border of the longest probe: a global dependency (or a receptive field
    # larger than the cap, which tiling could not serve either). Bound the local part by the far field.
    quarter = max(border // 2, 1)
    far_level = float(profile[quarter:].max())
    level = FAR_FIELD_FACTOR * far_level
    above = np.nonzero(profile > level)[0]
    local = int(above.max()) if above.size else 0
    if local >= quarter:
        log.warning(
            "the response along %s does not fall below the far field within %d voxels (probe %s): the "
            "halo %d is a lower bound", ax, quarter, shape, local,
        )
    return {"halo": local, "global": True, "threshold": level, "far_field": far_level, "shape": shape}


PHASE_CHUNK = 4  # output phases evaluated per batch: bounds the probe's memory for large divisors
# Two random positive backgrounds (uniform ranges), so that a ReLU dead on one is alive on the other.
BACKGROUNDS = ((0.25, 0.75), (0.0, 1.0))


def _profile(module: Any, shape: tuple[int, ...], axes: str, output_axes: str | None, ax: str, div: int,
             phases: list[int], backgrounds: tuple[tuple[float, float], ...], seed: int) -> tuple[np.ndarray, int]:
    """Peak-normalised |d out_centre / d in| by distance from the centre along ``ax``, and the border distance.

    The response is the max over the random positive ``backgrounds``, the given output ``phases`` (the centre
    voxel shifted by 0..div-1 along ``ax``; one batch item each), both sides, the other axes and the channels.
    The border distance is the smallest distance from a probed centre to either end of the probe.
    """
    import torch

    in_axes = "b" + axes.replace("b", "")
    i = in_axes.index(ax)
    body = tuple(s for j, s in enumerate(shape) if axes[j] != "b")
    n_ax = body[i - 1]
    result = np.zeros(n_ax, dtype=np.float64)
    border = n_ax
    for k, (lo, hi) in enumerate(backgrounds):
        gen = torch.Generator().manual_seed(seed * 1000 + k)
        background = torch.rand(body, generator=gen, dtype=torch.float64) * (hi - lo) + lo
        prof = np.zeros(n_ax, dtype=np.float64)
        for start in range(0, len(phases), PHASE_CHUNK):
            chunk = phases[start:start + PHASE_CHUNK]
            x = background.unsqueeze(0).repeat((len(chunk),) + (1,) * len(body)).requires_grad_(True)
            out = _forward(module, x)
            o_axes = _output_axes(in_axes, output_axes, out.ndim)
            if ax not in o_axes:
                raise ConfigError(f"the model output (axes {o_axes!r}) has no {ax!r} axis; cannot measure its halo.")
            n_out = out.shape[o_axes.index(ax)]
            scale = n_out / n_ax
            channels = out.shape[o_axes.index("c")] if "c" in o_axes else 1
            weights = torch.rand(channels, generator=gen, dtype=torch.float64) + 0.5
            total = out.new_zeros(())
            centres = []
            for b, phase in enumerate(chunk):
                c_out = n_out // 2
                c_out = min(n_out - 1, c_out - c_out % max(div, 1) + phase)
                idx: list[Any] = []
                for a_pos, a in enumerate(o_axes):
                    if a == "b":
                        idx.append(b)
                    elif a == "c":
                        idx.append(slice(None))
                    else:
                        idx.append(c_out if a == ax else out.shape[a_pos] // 2)
                sel = out[tuple(idx)].reshape(-1)
                total = total + (sel * weights[: sel.numel()]).sum()
                centres.append((c_out + 0.5) / scale - 0.5)
            (grad,) = torch.autograd.grad(total, x)
            g = grad.abs().numpy()
            for b, centre in enumerate(centres):
                along = np.moveaxis(g[b], i - 1, 0).reshape(n_ax, -1).max(axis=1)
                dist = np.ceil(np.abs(np.arange(n_ax) - centre) - 1e-9).astype(int)
                np.maximum.at(prof, dist, along)
                border = min(border, int(math.floor(centre)), int(math.floor(n_ax - 1 - centre)))
        peak = prof.max()
        if not np.isfinite(peak):
            raise RunError(f"the receptive-field probe {shape} met NaN/Inf in the model's response; the weights are "
                           "damaged or the model overflows on inputs in [0, 1].")
        if peak > 0:
            result = np.maximum(result, prof / peak)
    if not result.any():
        raise _NoResponse(shape)
    return result, max(border, 0)


class _NoResponse(Exception):
    """No background gave the centre output any dependence on the input (e.g. every ReLU dead on a tiny probe)."""


def _forward(module: Any, x: Any) -> Any:
    try:
        out = module(x)
    except Exception as exc:  # a probe the model rejects is a configuration problem the caller can fix
        raise RunError(
            f"the receptive-field probe of shape {tuple(x.shape)} failed in the model ({type(exc).__name__}: {exc}). "
            "Give a probe shape that the model accepts (e.g. a multiple of its divisor per axis)."
        ) from exc
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out


def _output_axes(in_axes: str, output_axes: str | None, ndim: int) -> str:
    if output_axes is not None:
        o = "b" + output_axes.replace("b", "")
        if len(o) != ndim:
            raise ConfigError(f"output axes {output_axes!r} do not match the model output's {ndim} dimensions.")
        return o
    if ndim == len(in_axes):
        return in_axes
    if "t" in in_axes and ndim == len(in_axes) - 1:
        return in_axes.replace("t", "")
    raise ConfigError(
        f"cannot tell the axes of a {ndim}-D output from input axes {in_axes!r}; pass output_axes (e.g. 'bcyx')."
    )
