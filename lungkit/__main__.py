"""`python -m lungkit` runs the command-line interface."""

from lungkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
