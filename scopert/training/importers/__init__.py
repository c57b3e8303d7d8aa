"""One importer per seed checkpoint format; each writes a run folder that ``scopert export`` accepts."""
