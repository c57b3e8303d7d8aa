"""3D U-Net as pytorch-3dunet builds it (Wolny et al. 2020): segmentation and regression.

One folder per family: ``model`` (the network, registered with ``common.registry``), ``config``,
``data``, ``losses``, ``train`` and ``importer`` (the seed repository's checkpoint format).
"""
