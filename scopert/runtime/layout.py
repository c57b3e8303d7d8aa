"""Axis bookkeeping between a user's array, the runtime's internal layout and the model's tensor layout.

Internally every array is ``(C, *loop, *tiled)``: one channel-like axis first, then the loop axes, then
the tiled axes in the model's order. The channel-like axis is ``c`` (or, for a model that consumes a window
of frames and returns the centre frame, the window ``t``); a model without one gets a virtual axis of size 1.
Loop axes are axes of the data that the model does not have (``t`` and ``z`` of a time-lapse z-stack under
a 2D model): they are tiled with tiles of one plane and no halo, so several planes share a batch and the
output keeps the input's axes. Imports only numpy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from scopert.card import ModelCard, TensorSpec
from scopert.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """How one model tensor maps onto the internal ``(C, *tiled)`` layout."""

    model_axes: str  # e.g. 'bczyx', 'btcyx', 'btyx'
    channel: str | None  # the channel-like axis letter in the model tensor, or None (virtual)
    tiled: str  # tiled axes in model order
    loop: str = ""  # data axes the model does not have, run plane by plane (tiles of size 1, slowest first)

    @property
    def internal_axes(self) -> str:
        return (self.channel or "C") + self.loop + self.tiled

    @property
    def all_tiled(self) -> str:
        """The axes the tile planner sees: loop axes first, then the model's tiled axes."""
        return self.loop + self.tiled

    def with_loop(self, loop: str) -> "Layout":
        return Layout(self.model_axes, self.channel, self.tiled, loop)

    def _model_order(self) -> list[int]:
        """Permutation from internal batch (B, C, *tiled) to model layout."""
        internal = "b" + (self.channel or "C") + self.tiled
        return [internal.index(a) for a in self.model_axes if a in internal]

    def to_model(self, batch: np.ndarray) -> np.ndarray:
        if self.loop:  # tiles are one plane thick along loop axes: drop them
            batch = batch.reshape(batch.shape[:2] + batch.shape[2 + len(self.loop):])
        if self.channel is None:
            batch = batch[:, 0]
            internal = "b" + self.tiled
            return np.transpose(batch, [internal.index(a) for a in self.model_axes])
        return np.transpose(batch, self._model_order())

    def from_model(self, batch: np.ndarray) -> np.ndarray:
        if self.channel is None:
            internal = "b" + self.tiled
            batch = np.transpose(batch, [self.model_axes.index(a) for a in internal])[:, None]
        else:
            batch = np.transpose(batch, np.argsort(self._model_order()))
        if self.loop:
            batch = batch.reshape(batch.shape[:2] + (1,) * len(self.loop) + batch.shape[2:])
        return batch


def shape_only(shape: tuple[int, ...]) -> np.ndarray:
    """A zero-byte stand-in array of ``shape``, for planning from a file's header before any pixel is read."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape=shape, strides=(0,) * len(shape))


def centre_frame_model(card: ModelCard) -> bool:
    """True when the model takes a window of frames and returns one frame (no 't' in its output)."""
    return "t" in card.input.axes and "t" not in card.output.axes


def layouts(card: ModelCard) -> tuple[Layout, Layout]:
    centre = centre_frame_model(card)

    def one(spec: TensorSpec, is_input: bool) -> Layout:
        axes = spec.axes
        if "c" in axes:
            channel = "c"
        elif centre and is_input:
            channel = "t"
        else:
            channel = None
        tiled = "".join(a for a in axes if a not in "b" and a != channel)
        return Layout(axes, channel, tiled)

    return one(card.input, True), one(card.output, False)


def data_axes_candidates(card: ModelCard) -> list[str]:
    """The data layouts a user may pass: with and without the channel axis when the model has one."""
    full = card.input.axes.replace("b", "")
    out = []
    if "c" in full and card.input.channels == 1:
        out.append(full.replace("c", ""))
    out.append(full)
    return out


LOOP_AXES = "tz"
"""Axes a model without them runs over plane by plane, in the order they are looped (slowest first)."""


def split_loop_axes(data_axes: str, card: ModelCard) -> tuple[str, str]:
    """(loop axes in ``LOOP_AXES`` order, the data axes the model itself sees) for resolved data axes."""
    model_part = "".join(a for a in data_axes if a in card.input.axes.replace("b", ""))
    loop = "".join(a for a in LOOP_AXES if a in data_axes and a not in model_part)
    return loop, model_part


def _loop_choices(card: ModelCard) -> str:
    """The loop axes this model can take: those of t, z it does not have (none for frame-window models)."""
    if centre_frame_model(card):
        return ""
    return "".join(a for a in LOOP_AXES if a not in card.input.axes)


def resolve_data_axes(array, card: ModelCard, axes: str | None, file_axes: str | None = None,
                      where: str = "the input") -> str:
    """Decide the user's array axes, or explain which layouts the model accepts.

    ``axes`` (the user's word) wins, then ``file_axes`` (what the file's metadata states; give None for a file
    that does not say), then the model's own layout for this many dimensions, with extra leading dimensions taken
    as loop axes (z, then t) that a model without them runs over plane by plane: a 2D model restores every plane
    of a z-stack or a time-lapse. Stated axes that do not fit are refused with the fix, never reinterpreted:
    channels are not z, and time is not z.
    """
    candidates = data_axes_candidates(card)
    loops = _loop_choices(card)
    shape = tuple(int(n) for n in array.shape)
    ndim = len(shape)
    if axes is not None:
        return _check_axes(axes.lower(), shape, card, candidates, loops, "--axes", where)
    if file_axes:
        return _check_axes(file_axes.lower(), shape, card, candidates, loops, f"{where} states axes", where)
    for cand in candidates:
        if len(cand) == ndim and ("c" not in cand or shape[cand.index("c")] == card.input.channels):
            return cand
    for cand in candidates:
        extra = ndim - len(cand)
        if 0 < extra <= len(loops) and ("c" not in cand or shape[extra + cand.index("c")] == card.input.channels):
            return "".join(a for a in LOOP_AXES if a in loops[-extra:]) + cand
    takes = " or ".join(candidates)
    loop_hint = f", optionally with {'/'.join(loops)} in front (run plane by plane)" if loops else ""
    raise InputError(
        f"wrong number of axes: the model ({card.input.axes}) takes {takes}{loop_hint}, but the input has {ndim} "
        f"dimensions (shape {shape}). Pass the right image, or say its axes with --axes (e.g. --axes "
        f"{(loops[-1:] if loops else '') + candidates[0]})."
    )


def _channel_fix(axes: str, shape: tuple[int, ...], card: ModelCard) -> str:
    """The way out for a multi-channel input and a model that takes fewer channels."""
    n = shape[axes.index("c")]
    if card.input.channels == 1 and n > 1:
        return (f" Pick one channel with --channel N (0 to {n - 1}), or restore each channel on its own with "
                "--per-channel (the output keeps the channels).")
    return f" Pass an image with {card.input.channels} channel(s)."


def _check_axes(axes: str, shape: tuple[int, ...], card: ModelCard, candidates: list[str], loops: str,
                what: str, where: str = "the input") -> str:
    full = set(candidates[-1])
    if len(axes) != len(shape):
        raise InputError(f"{what} {axes!r}: {len(axes)} letters, but {where} has {len(shape)} dimensions "
                         f"(shape {shape}); give one letter per dimension.")
    if len(set(axes)) != len(axes) or set(axes) - set("tczyx"):
        raise InputError(f"{what} {axes!r}: name each of t, c, z, y, x at most once.")
    model_part = "".join(a for a in axes if a in full)
    extra = "".join(a for a in axes if a not in full)
    if "c" in axes and shape[axes.index("c")] != card.input.channels:
        raise InputError(f"{what} {axes!r} (shape {shape}): {shape[axes.index('c')]} channels, and the model "
                         f"({card.input.axes}) takes {card.input.channels}.{_channel_fix(axes, shape, card)}")
    # the order of the axes is the file's own (ImageJ stores z before c): only which axes there are must fit
    if sorted(model_part) not in [sorted(c) for c in candidates] or set(extra) - set(loops):
        loop_hint = (f", optionally with {' and/or '.join(loops)} that it runs over plane by plane" if loops
                     else "")
        raise InputError(f"{what} {axes!r} (shape {shape}), which do not fit this model ({card.input.axes}): it "
                         f"takes {' or '.join(candidates)}{loop_hint}. If the axes metadata is wrong, say the "
                         f"axes with --axes (e.g. --axes {(loops[-1:] if loops else '') + candidates[0]}).")
    if "c" not in axes and card.input.channels != 1:
        raise InputError(f"the model takes {card.input.channels} input channels; the axes need a 'c'.")
    return axes


class _LazyTransposed:
    """A lazy array (h5py, zarr, slab reader) seen in another axis order, read only where it is sliced."""

    def __init__(self, array, order: list[int], new_axis: bool) -> None:
        self.array, self.order, self.new_axis = array, order, new_axis
        src_shape = (1,) + tuple(array.shape) if new_axis else tuple(array.shape)
        self.shape = tuple(int(src_shape[i]) for i in order)
        self.dtype = array.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        src_key = [slice(None)] * self.ndim
        for k, i in zip(key, self.order):
            src_key[i] = slice(k, k + 1) if isinstance(k, (int, np.integer)) else k
        block = np.asarray(self.array[tuple(src_key[1:] if self.new_axis else src_key)])
        if self.new_axis:
            block = block[None]
        block = np.transpose(block, self.order)
        drop = tuple(i for i, k in enumerate(key) if isinstance(k, (int, np.integer)))
        return block.reshape([n for i, n in enumerate(block.shape) if i not in drop]) if drop else block


def to_internal(array, data_axes: str, layout: Layout):
    """A view (no copy) of the user's array in the internal ``(C, *loop, *tiled)`` order.

    Lazy arrays (not numpy) stay lazy: they are read tile by tile in the file's own order.
    """
    target = layout.internal_axes
    if not isinstance(array, np.ndarray):
        if data_axes == target:
            return array
        src = data_axes if len(data_axes) == len(target) else target[0] + data_axes
        if sorted(src) != sorted(target):
            raise InputError(f"axes {data_axes!r} cannot be arranged as {target!r}; this is a bug, please report it.")
        return _LazyTransposed(array, [src.index(a) for a in target], len(src) != len(data_axes))
    if "c" not in data_axes and layout.channel == "c":
        array, data_axes = array[None], "c" + data_axes
    if layout.channel is None:
        array, data_axes = array[None], "C" + data_axes
    order = [data_axes.index(a) for a in target]
    return np.transpose(array, order)
