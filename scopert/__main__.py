"""``python -m scopert`` runs the same CLI as the ``scopert`` console script."""

from scopert.cli import main

if __name__ == "__main__":
    main()
