"""Training stage: faithful PyTorch versions of the seed families, their data, losses, trainer and importers.

Must not import ``scopert.export`` or ``scopert.runtime``.
"""
