"""Command-line interface: `lungkit data|train|sample|evaluate|compare|demo`.

A thin layer over the library: each sub-command parses its options, configures logging and
calls one library function. Sections are kept apart so each sub-command can grow on its own.
"""

import argparse
import logging
import sys

from lungkit import __version__

logger = logging.getLogger("lungkit")


# --- data ------------------------------------------------------------------------------------
def add_data_commands(subparsers):
    """`lungkit data phantom|fetch|info`."""
    parser = subparsers.add_parser("data", help="make, download or inspect a dataset")
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)


# --- train / sample ---------------------------------------------------------------------------
def add_train_commands(subparsers):
    """`lungkit train MODEL ...` and `lungkit sample MODEL ...`."""


# --- evaluate / compare / demo ----------------------------------------------------------------
def add_experiment_commands(subparsers):
    """`lungkit evaluate`, `lungkit compare`, `lungkit demo`."""


# --- entry point ------------------------------------------------------------------------------
def build_parser():
    parser = argparse.ArgumentParser(
        prog="lungkit",
        description="VAE vs. diffusion models for lung CT image generation (Chen, 2024): "
        "data tools, training, sampling and the comparison report.",
    )
    parser.add_argument("--version", action="version", version=f"lungkit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    add_data_commands(subparsers)
    add_train_commands(subparsers)
    add_experiment_commands(subparsers)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except (ValueError, FileNotFoundError, TypeError) as error:
        logger.error("%s", error)
        return 1


if __name__ == "__main__":
    sys.exit(main())
