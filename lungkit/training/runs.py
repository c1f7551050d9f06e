"""The record of a run: what it was trained with, how far it got, and what to do next time.

`<out_dir>/<name>.run.json` is written when training starts and updated when it ends. It is
the run folder's marker (lungkit never replaces a model file in a folder without one) and
its fingerprint: the model's configuration, the optimizer's, the batch size and the training
data (`make_dataset` attaches a content hash, `dataset.fingerprint`). `plan_run` compares it
with the run about to start and decides:

    no record, no run files          "fresh"     train from epoch 0
    same settings, interrupted       "resume"    continue from the backup
    same settings, finished, fewer   "continue"  train the extra epochs from the backup
    same settings, finished, as many "load"      load the finished model, train nothing
    other settings                   refused, naming each difference; `retrain=True` (or
                                     "if_changed") moves the old run aside and starts over

A finished run is never trained again by accident: the next-day "Run all" of a notebook, or
`lungkit train` with the same `--out`, loads it. Moving aside keeps every old file, under
`<out_dir>/replaced-<UTC time>/`.
"""

import datetime
import json
import logging
import shutil
from pathlib import Path

from lungkit.files import read_json, write_json
from lungkit.training.callbacks import BACKUP_DIR, HISTORY_FILE, backup_epoch

logger = logging.getLogger(__name__)

RUN_SUFFIX = ".run.json"
RETRAIN_CHOICES = (False, True, "if_changed")
# get_config keys that name a model instance rather than what it computes
UNTRACKED_CONFIG_KEYS = ("name", "trainable")


def run_files(out_dir, name, stages=()):
    """The entries of `out_dir` that a run named `name` writes (those that exist)."""
    out_dir = Path(out_dir)
    names = [f"{name}.keras", f"{name}.best.keras", f"{name}{RUN_SUFFIX}", HISTORY_FILE,
             BACKUP_DIR, "logs", *stages]
    return [out_dir / entry for entry in names if (out_dir / entry).exists()]


def _plain(value):
    """`value` as JSON types (tuples as lists, the rest as str), floats to 7 significant
    digits (float32 settings such as a learning rate of 0.1 read back as 0.100000001), and
    without the keys that label a layer or model (`UNTRACKED_CONFIG_KEYS`, sub-models too)."""
    def rounded(item):
        if isinstance(item, float):
            return float(f"{item:.7g}")
        if isinstance(item, dict):
            layer = "trainable" in item  # a layer's or model's config: its name is a label
            return {key: rounded(v) for key, v in item.items()
                    if not (layer and key in UNTRACKED_CONFIG_KEYS)}
        if isinstance(item, list):
            return [rounded(v) for v in item]
        return item

    return rounded(json.loads(json.dumps(value, default=str, sort_keys=True)))


def run_settings(model, batch_size=None, data=None, extra=None):
    """The settings that decide what a training computes, as JSON-ready values.

    Args:
        model: the compiled model (its class, `get_config()` and optimizer).
        batch_size: the global batch.
        data: a fingerprint of the training data (`dataset.fingerprint`), or None.
        extra: any other settings a caller wants compared (a dict).
    """
    config = model.get_config()
    optimizer = getattr(model, "optimizer", None)
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # a LossScaleOptimizer
    optimizer_config = None
    if optimizer is not None:
        optimizer_config = {k: v for k, v in optimizer.get_config().items() if k != "name"}
        optimizer_config["class"] = type(optimizer).__name__
    return _plain({"model": type(model).__name__, "config": config,
                   "optimizer": optimizer_config, "batch_size": batch_size, "data": data,
                   **(extra or {})})


def differences(old, new, prefix=""):
    """`["key: old -> new", ...]` for every leaf that differs between two settings dicts."""
    found = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "(absent)"), new.get(key, "(absent)")
        if isinstance(a, dict) and isinstance(b, dict):
            found += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return found


class RunRecord:
    """`<out_dir>/<name>.run.json`: the settings, the epochs asked for and done, finished."""

    def __init__(self, out_dir, name):
        self.out_dir, self.name = Path(out_dir), name
        self.path = self.out_dir / f"{name}{RUN_SUFFIX}"

    def read(self):
        """The record, or None when there is none (a corrupt one raises, naming the file)."""
        if not self.path.exists():
            return None
        return read_json(self.path, "run record")

    def write(self, settings, epochs, epochs_done, finished, stages=()):
        write_json(self.path, {"settings": settings, "epochs": epochs,
                               "epochs_done": epochs_done, "finished": finished,
                               "stages": list(stages)})

    def set_aside(self, stages=()):
        """Moves the run's files into `replaced-<UTC time>/`; returns that folder or None."""
        entries = run_files(self.out_dir, self.name, stages)
        if not entries:
            return None
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        target = self.out_dir / f"replaced-{stamp}"
        target.mkdir(parents=True)
        for entry in entries:
            shutil.move(str(entry), str(target / entry.name))
        logger.warning("Moved the earlier run %s in %s aside to %s", self.name, self.out_dir,
                       target)
        return target


def plan_run(record, settings, epochs, retrain=False, stages=()):
    """What `fit` does with `record` for a run with `settings` to `epochs` epochs.

    Returns:
        `(action, epochs_done)`: action "fresh", "resume", "continue" or "load".

    Raises:
        ValueError: settings differ (each difference named) and `retrain` is False; run
            files exist without a record; a finished run to continue has lost its backup.
    """
    if retrain not in RETRAIN_CHOICES:
        raise ValueError(f"`retrain` must be one of {RETRAIN_CHOICES}. Received: "
                         f"retrain={retrain!r}")
    previous = record.read()
    if retrain is True:
        record.set_aside((previous or {}).get("stages", stages))
        return "fresh", 0
    if previous is None:
        leftovers = run_files(record.out_dir, record.name)
        if leftovers:
            raise ValueError(
                f"`out_dir` {record.out_dir} holds {', '.join(p.name for p in leftovers)} "
                f"but no {record.path.name}: written by an older lungkit or another program. "
                f"Nothing was changed; choose another out_dir, or pass retrain=True "
                f"(`--retrain`) to move them aside and start over.")
        return "fresh", 0
    changed = differences(previous["settings"], settings)
    if changed:
        if retrain == "if_changed":
            logger.info("Settings of %s changed (%s): training it again", record.name,
                        "; ".join(changed))
            record.set_aside(previous.get("stages", stages))
            return "fresh", 0
        raise ValueError(
            f"`out_dir` {record.out_dir} holds a run of {record.name} trained with other "
            f"settings: {'; '.join(changed)}. Nothing was changed; use another out_dir, or "
            f"pass retrain=True (`--retrain`, RETRAIN = True) to move it aside and start over.")
    done = int(previous.get("epochs_done", 0))
    if not previous.get("finished"):
        return "resume", done
    if epochs <= done:
        return "load", done
    if backup_epoch(record.out_dir / BACKUP_DIR) != done:
        raise ValueError(f"The finished run in {record.out_dir} has no backup at epoch {done} "
                         f"to continue from ({BACKUP_DIR}/ was removed); pass retrain=True to "
                         f"start over, or epochs={done} to load it.")
    return "continue", done
