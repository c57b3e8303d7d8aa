"""CNNT (Rehman et al.): convolutional neural network transformer for 2D+t denoising.

One folder per family: ``model`` (the network, registered with ``common.registry``), ``config``,
``data``, ``losses``, ``train`` and ``importer`` (the seed repository's checkpoint format).
"""
