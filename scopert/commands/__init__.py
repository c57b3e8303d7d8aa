"""CLI commands that live in their own modules; ``scopert.cli`` adds each module's ``command``."""
