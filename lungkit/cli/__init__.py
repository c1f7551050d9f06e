"""Command-line interface: `lungkit data|train|sample|evaluate|compare|demo`.

A thin layer over the library: each sub-command parses its options, configures logging and
calls one library function. One module per group of sub-commands
(`data`, `train`, `experiment`); option types in `options`.
"""

import argparse
import logging

from lungkit import __version__
from lungkit.cli.data import add_data_commands
from lungkit.cli.experiment import add_experiment_commands
from lungkit.cli.train import add_train_commands

logger = logging.getLogger("lungkit")


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
    except KeyboardInterrupt as interrupt:  # Ctrl-C: one line, what is saved (no traceback)
        logger.error("%s", str(interrupt) or "Interrupted.")
        return 130
    except (ValueError, FileNotFoundError, TypeError, OSError) as error:
        logger.error("%s", error)
        return 1

