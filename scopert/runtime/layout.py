"""Axis bookkeeping between a user's array, the runtime's internal layout and the model's tensor layout.

Internally every array is ``(C, *tiled)``: one channel-like axis first, then the tiled axes in the
model's order. The channel-like axis is ``c`` (or, for a model that consumes a window of frames and
returns the centre frame, the window ``t``); a model without one gets a virtual axis of size 1.
Imports only numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scopert.card import ModelCard, TensorSpec
from scopert.errors import InputError


@dataclass(frozen=True)
class Layout:
    """How one model tensor maps onto the internal ``(C, *tiled)`` layout."""

    model_axes: str  # e.g. 'bczyx', 'btcyx', 'btyx'
    channel: str | None  # the channel-like axis letter in the model tensor, or None (virtual)
    tiled: str  # tiled axes in model order

    @property
    def internal_axes(self) -> str:
        return (self.channel or "C") + self.tiled

    def _model_order(self) -> list[int]:
        """Permutation from internal batch (B, C, *tiled) to model layout."""
        internal = "b" + self.internal_axes
        return [internal.index(a) for a in self.model_axes if a in internal]

    def to_model(self, batch: np.ndarray) -> np.ndarray:
        if self.channel is None:
            batch = batch[:, 0]
            internal = "b" + self.tiled
            return np.transpose(batch, [internal.index(a) for a in self.model_axes])
        return np.transpose(batch, self._model_order())

    def from_model(self, batch: np.ndarray) -> np.ndarray:
        if self.channel is None:
            internal = "b" + self.tiled
            batch = np.transpose(batch, [self.model_axes.index(a) for a in internal])
            return batch[:, None]
        order = self._model_order()
        return np.transpose(batch, np.argsort(order))


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


def resolve_data_axes(array: np.ndarray, card: ModelCard, axes: str | None) -> str:
    """Decide the user's array axes, or explain which layouts the model accepts."""
    candidates = data_axes_candidates(card)
    if axes is not None:
        axes = axes.lower()
        want = set(candidates[-1])
        if len(axes) != array.ndim:
            raise InputError(f"axes {axes!r} has {len(axes)} letters but the array has {array.ndim} dimensions "
                             f"(shape {tuple(array.shape)}).")
        if set(axes) | {"c"} != want | {"c"} or ("c" in axes and "c" not in want) or len(set(axes)) != len(axes):
            raise InputError(f"axes {axes!r} do not fit this model; it takes {' or '.join(candidates)}.")
        if "c" not in axes and card.input.channels != 1:
            raise InputError(f"the model takes {card.input.channels} input channels; the axes need a 'c'.")
        return axes
    for cand in candidates:
        if len(cand) == array.ndim and ("c" not in cand or array.shape[cand.index("c")] == card.input.channels):
            return cand
    raise InputError(
        f"wrong number of axes: the model ({card.input.axes}) takes {' or '.join(candidates)} "
        f"({' or '.join(str(len(c)) + 'D' for c in candidates)}), but the input has {array.ndim} dimensions "
        f"(shape {tuple(array.shape)}). Pass the right image, or say its axes with --axes."
    )


class _ChannelFirst:
    """A lazy array (h5py dataset, slab reader) seen with a leading channel axis of size 1."""

    def __init__(self, array) -> None:
        self.array = array
        self.shape = (1,) + tuple(array.shape)
        self.dtype = array.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        return np.asarray(self.array[key[1:]])[None]


def to_internal(array, data_axes: str, layout: Layout):
    """A view (no copy) of the user's array in the internal ``(C, *tiled)`` order.

    Lazy arrays (not numpy) are read slab by slab and cannot be transposed: their axes must already be
    in the model's order.
    """
    if not isinstance(array, np.ndarray):
        if data_axes == layout.internal_axes:
            return array
        if len(layout.internal_axes) == len(data_axes) + 1 and layout.internal_axes[1:] == data_axes:
            return _ChannelFirst(array)
        raise InputError(f"a file read lazily must have its axes in the model's order "
                         f"({layout.internal_axes.lstrip('C')}), not {data_axes!r}; load it into memory first.")
    if "c" not in data_axes and layout.channel == "c":
        array, data_axes = array[None], "c" + data_axes
    if layout.channel is None:
        array, data_axes = array[None], "C" + data_axes
    order = [data_axes.index(a) for a in layout.internal_axes]
    return np.transpose(array, order)
