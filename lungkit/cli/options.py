"""Option types and `--set KEY=VALUE` parsing shared by every sub-command.

Bad values are refused while parsing, before anything loads.
"""

import argparse
import math


def int_at_least(low):
    """An argparse type: an integer >= `low` (bad values are refused before anything loads)."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") \
                from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def _finite_float(text, low, inclusive):
    bound = f"{'>=' if inclusive else '>'} {low:g}"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number {bound}, got {text!r}") from None
    if not math.isfinite(value) or value < low or (value == low and not inclusive):
        raise argparse.ArgumentTypeError(f"expected a finite number {bound}, got {text}")
    return value


def positive_float(text):
    """An argparse type: a finite number > 0."""
    return _finite_float(text, 0, inclusive=False)


def non_negative_float(text):
    """An argparse type: a finite number >= 0."""
    return _finite_float(text, 0, inclusive=True)


def fraction_below_one(text):
    """An argparse type: a finite number in [0, 1)."""
    value = _finite_float(text, 0, inclusive=True)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 and < 1, got {text}")
    return value


def parse_assignments(pairs):
    """`["vae.epochs=5", "models=vae,denoiser"]` -> `{"vae.epochs": 5, "models": ("vae", ...)}`."""
    values = {}
    for pair in pairs or ():
        if "=" not in pair:
            raise ValueError(f"`--set` takes KEY=VALUE. Received: {pair!r}")
        key, raw = pair.split("=", 1)
        values[key.strip()] = _parse_value(raw.strip())
    return values


def _parse_value(raw):
    if "," in raw:
        return tuple(_parse_value(part) for part in raw.split(",") if part)
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw

