"""The lean runtime: numpy plus one inference backend (ONNX Runtime, OpenVINO or TensorRT).

It streams overlapping tiles through a model and stitches them without seams. It must never import
torch, onnx, ``scopert.training`` or ``scopert.export`` (a test enforces it)::

    from scopert.runtime import load
    model = load("engines/rcan.onnx")
    restored = model.predict(volume)                       # whole arrays, tiled
    for frame in model.stream(camera_frames, on_full="drop"):   # live acquisition, in order
        ...
"""

from scopert.runtime.loader import load
from scopert.runtime.model import Model

__all__ = ["Model", "load"]
