"""TA-GAN (Bouchard et al. 2023): task-assisted GAN for resolution enhancement.

One folder per family: ``model`` (the network, registered with ``common.registry``), ``config``,
``data``, ``losses``, ``train`` and ``importer`` (the seed repository's checkpoint format).
"""
