"""The machinery every family shares: the trainer, the family registry, run folders, config files and state-dict helpers."""
