"""bioimage.io in one place, both directions: ``package`` writes a ScopeRT model as a bioimage.io package
(Fiji/deepImageJ, ilastik, napari, bioimageio.core), ``importer`` turns a package (ours or the zoo's) into a
ScopeRT ONNX with its card. Both use the export stage's public functions (trace, verify, write) and the
runtime's normalization; needs the ``bioimageio`` extra.
"""
