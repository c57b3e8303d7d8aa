"""The self-supervised blind-spot EM denoiser (SHINE): a window of frames in, the centre frame out.

One folder per family: ``model`` (the network, registered with ``common.registry``), ``config``,
``data``, ``losses``, ``train`` and ``importer`` (the seed repository's checkpoint format).
"""
