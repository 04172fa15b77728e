"""``python -m lmforge`` runs the command-line interface."""

from lmforge.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
