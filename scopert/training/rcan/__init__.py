"""3D-RCAN (Chen et al. 2021): residual channel attention networks for 2D and 3D restoration.

One folder per family: ``model`` (the network, registered with ``common.registry``), ``config``,
``data``, ``losses``, ``train`` and ``importer`` (the seed repository's checkpoint format).
"""
