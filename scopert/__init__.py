"""ScopeRT: microscopy restoration and segmentation networks from training to tiled, streamed inference.

The package has three stages (``training`` -> ``export`` -> ``runtime``) joined by one contract,
the ModelCard (``scopert.card``). Importing ``scopert`` imports nothing heavy.
"""

__version__ = "0.1.0"
