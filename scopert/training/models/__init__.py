"""One module per model family; each registers itself with ``scopert.training.registry``."""
