"""Open ScopeRT outputs in napari: each image (or channel) one layer, with its axis names, pixel size and units.

OME-Zarr: an image with ``multiscales`` (``apply -o OUT.zarr``) or a store holding several (``scopert acquire``:
``raw`` and ``restored``), as multiscale layers read lazily with dask, so a terabyte pyramid opens at once.
TIFF: a file whose channels ScopeRT named (Raw, Restored, Ground Truth), one layer per channel. Anything else is
left to napari's own readers (``get_reader`` returns None).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from scopert.runtime.io.omezarr import ome_attrs
from scopert.runtime.io.physical import from_ngff

log = logging.getLogger(__name__)

LayerData = tuple[Any, dict[str, Any], str]


def get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """napari's reader hook: a function for files ScopeRT wrote, else None."""
    if isinstance(path, list):
        return None if len(path) != 1 else get_reader(path[0])
    p = Path(path)
    try:
        if p.suffix.lower() == ".zarr" and zarr_images(p):
            return lambda _path: read_zarr_layers(p)
        if p.suffix.lower() in (".tif", ".tiff") and _scopert_channels(p):
            return lambda _path: read_tiff_layers(p)
    except Exception:  # noqa: BLE001 - not ours, or unreadable: napari's other readers may open it
        log.debug("not a ScopeRT output: %s", p, exc_info=True)
    return None


def zarr_images(path: Path) -> list[tuple[str, Any]]:
    """The OME-Zarr images in ``path``: (layer name, group), the store itself or its image subgroups."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    if "multiscales" in ome_attrs(group.attrs):
        return [(path.stem, group)]
    images = []
    for name, sub in sorted(group.groups()):
        if "multiscales" in ome_attrs(sub.attrs):
            images.append((name, sub))
    return images


def read_zarr_layers(path: Path) -> list[LayerData]:
    import dask.array as da

    layers: list[LayerData] = []
    for name, group in zarr_images(path):
        ome = ome_attrs(group.attrs)
        entry = ome["multiscales"][0]
        axes = "".join(str(a["name"] if isinstance(a, dict) else a).lower() for a in entry["axes"])
        levels = [da.from_zarr(group[d["path"]]) for d in entry["datasets"]]
        labels = [c.get("label") for c in (ome.get("omero") or {}).get("channels", [])]
        layers += channel_layers(name, levels, axes, physical_kwargs(axes, from_ngff(entry)), labels)
    return layers


def _scopert_channels(path: Path) -> list[str] | None:
    from scopert.runtime.io import read_image

    with read_image(path) as image:
        names = image.channel_names or []
    return names if any(str(n).lower().startswith("restored") for n in names) else None


def read_tiff_layers(path: Path) -> list[LayerData]:
    from scopert.runtime.io import read_image

    with read_image(path) as image:
        data = np.asarray(image.array)
        axes, names, physical = image.axes, image.channel_names, image.physical
    return channel_layers(path.stem, [data], axes, physical_kwargs(axes, physical), names or [])


def physical_kwargs(axes: str, physical: Any) -> dict[str, Any]:
    """napari's axis labels, scale and units for the axes shown (all but c) from the file's pixel sizes."""
    shown = axes.replace("c", "")
    kwargs: dict[str, Any] = {"axis_labels": tuple(shown)}
    if physical:
        kwargs["scale"] = tuple(physical.get(a) or 1.0 for a in shown)
        kwargs["units"] = tuple(physical.units.get(a) or "pixel" for a in shown)  # napari's word for none
    return kwargs


def channel_layers(name: str, levels: list[Any], axes: str, kwargs: dict[str, Any],
                   labels: list[Any]) -> list[LayerData]:
    """One image layer per channel (napari has no channel axis of its own); ``levels``: one array, or a pyramid."""
    kwargs = {**kwargs, "multiscale": len(levels) > 1}
    if "c" not in axes:
        return [(levels if len(levels) > 1 else levels[0], {**kwargs, "name": name}, "image")]
    ci = axes.index("c")
    n = levels[0].shape[ci]
    layers = []
    for k in range(n):  # one channel: the image's name alone; several: each by its label
        label = "" if n == 1 else labels[k] if k < len(labels) and labels[k] else f"c{k}"
        per = [level[(slice(None),) * ci + (k,)] for level in levels]
        layers.append((per if len(per) > 1 else per[0],
                       {**kwargs, "name": f"{name} {label}".strip(), "blending": "additive" if k else "translucent"},
                       "image"))
    return layers
