"""ScopeRT in napari (npe2 plugin, manifest ``napari.yaml``; ``pip install 'scopert[napari]'``).

``restore_widget``: pick an ``.onnx``, see its card and what will run it, restore the selected layer in a thread
with a progress bar and a Cancel button. ``live_widget``: run an MDA through ``scopert.acquisition`` and show raw
and restored frames as they arrive. ``reader``: open ScopeRT's outputs (OME-Zarr pyramids, including the raw and
restored images of ``scopert acquire``, and TIFFs with raw/restored channels) with their axes, names and scale.
Imports napari and Qt only in these modules; the runtime never imports them.
"""
