"""The files of a run: its record, its history rows, its model files and its backup.

The only code that reads and writes them, each through a temporary file and a rename
(`lungkit.files.atomic_path`), so a kill or a full disk at any instant leaves the previous
version of every file intact. `lungkit.training.callbacks` writes them during `fit`.

The record:

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

import csv
import datetime
import io
import json
import logging
import re
import shutil
from pathlib import Path

import keras
import numpy as np

from lungkit.files import atomic_path, read_json, remove_temporaries, write_json, write_text

logger = logging.getLogger(__name__)

HISTORY_FILE = "history.csv"
BACKUP_DIR = "backup"
BACKUP_STATE = "state.json"  # names the newest complete backup; written last (the commit)
BACKUP_PATTERN = re.compile(r"epoch-(\d+)\.weights\.h5")
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


def remove_interrupted_writes(out_dir, name):
    """Removes the temporary files of the run's writes that a kill interrupted (its models,
    record and history in `out_dir`, anything in its backup folder); returns them."""
    out_dir = Path(out_dir)
    own = [f"{name}.keras", f"{name}.best.keras", f"{name}{RUN_SUFFIX}", HISTORY_FILE]
    removed = remove_temporaries(out_dir, own) + remove_temporaries(out_dir / BACKUP_DIR)
    if removed:
        logger.info("Removed %d temporary file(s) of writes a kill interrupted: %s",
                    len(removed), ", ".join(p.name for p in removed))
    return removed


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


# --- history ------------------------------------------------------------------------------
def read_history(path):
    """Reads `history.csv` into `{column: list of floats}` (epoch as int), in file order.

    Rows that cannot be read (a truncated last line, NUL bytes from a crash, a non-integer
    epoch) are skipped with one warning naming them; a blank cell reads as NaN.
    """
    path = Path(path)
    if not path.exists():
        return {}
    text = path.read_bytes().decode("utf-8", errors="replace").replace("\x00", "")
    rows, bad = [], []
    for number, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        if None in row or any(value is None for value in row.values()):
            bad.append(number)  # more or fewer cells than the header
            continue
        try:
            epoch = int(row["epoch"])
        except (KeyError, TypeError, ValueError):
            bad.append(number)
            continue
        rows.append((epoch, row))
    if bad:
        logger.warning("%s: skipped unreadable row(s) at line(s) %s", path,
                       ", ".join(map(str, bad)))
    history = {}
    for epoch, row in rows:
        for key, value in row.items():
            if key == "epoch":
                value = epoch
            else:
                try:
                    value = float(value)
                except (TypeError, ValueError):  # "NA" or a blank cell
                    value = float("nan")
            history.setdefault(key, []).append(value)
    return history


def write_history(path, history):
    """Writes `{column: values}` (with an "epoch" column) to `path` as CSV, atomically."""
    keys = ["epoch", *sorted(k for k in history if k != "epoch")]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(keys)
    for index in range(len(history.get("epoch", []))):
        writer.writerow([history[key][index] if index < len(history[key]) else "" for key in keys])
    write_text(path, out.getvalue())


def trim_history(path, start_epoch):
    """Keeps only the rows of `path` with `epoch < start_epoch`, one per epoch; returns them.

    A repeated epoch (an epoch trained again after a crash) keeps its last row.
    """
    history = read_history(path)
    epochs = history.get("epoch", [])
    last = {epoch: index for index, epoch in enumerate(epochs) if epoch < start_epoch}
    keep = sorted(last.values(), key=lambda index: epochs[index])
    if len(keep) != len(epochs):
        logger.info("History: keeping %d row(s) of %d; epochs from %d on will be trained again",
                    len(keep), len(epochs), start_epoch)
        history = {key: [values[i] for i in keep] for key, values in history.items()}
        if Path(path).exists():
            write_history(path, history)
    return history


# --- models and backups -----------------------------------------------------------------
def save_model(model, path):
    """`model.save(path)` through a temporary file (Keras writes its target in place)."""
    with atomic_path(path) as temporary:
        model.save(temporary)
    return Path(path)


def _seed_generators(model):
    """Every `keras.random.SeedGenerator` owned by `model` or its layers, in a fixed order."""
    generators, seen = [], set()
    for layer in model._flatten_layers(include_self=True):
        for generator in getattr(layer, "_seed_generators", []):
            if id(generator) not in seen:
                seen.add(id(generator))
                generators.append(generator)
    return generators


def _backup_state(backup_dir):
    """The newest complete backup `{"epoch", "weights", "rng"}`, or None.

    `state.json` names it; when that file is unreadable (a crash, a disk error) the newest
    weights file that has its RNG file beside it is used, and the problem is logged.
    """
    backup_dir = Path(backup_dir)
    if not backup_dir.is_dir():
        return None
    try:
        state = read_json(backup_dir / BACKUP_STATE, "backup state")
        if (backup_dir / state["weights"]).is_file():
            return state
        logger.warning("%s names %s, which is missing", backup_dir / BACKUP_STATE,
                       state["weights"])
    except FileNotFoundError:
        pass
    except (ValueError, KeyError, TypeError) as error:
        logger.warning("%s; falling back to the newest readable backup", error)
    candidates = sorted((int(m.group(1)), p) for p in backup_dir.iterdir()
                        if (m := BACKUP_PATTERN.fullmatch(p.name)))
    for epoch, path in reversed(candidates):
        rng = backup_dir / f"epoch-{epoch}.rng.npz"
        if rng.is_file():
            return {"epoch": epoch, "weights": path.name, "rng": rng.name}
    return None


def backup_epoch(backup_dir):
    """The epoch a run backed up in `backup_dir` restarts at, or None without a backup."""
    state = _backup_state(backup_dir)
    return None if state is None else int(state["epoch"])


def save_backup(model, backup_dir, epoch):
    """Backs up weights, optimizer and RNG states after `epoch` epochs (atomic, then the
    state file names them, then older backups are removed)."""
    backup_dir = Path(backup_dir)
    weights, rng = f"epoch-{epoch}.weights.h5", f"epoch-{epoch}.rng.npz"
    with atomic_path(backup_dir / weights) as temporary:
        model.save_weights(temporary)
    states = {f"state_{i}": keras.ops.convert_to_numpy(g.state)
              for i, g in enumerate(_seed_generators(model))}
    with atomic_path(backup_dir / rng) as temporary:
        np.savez(temporary, **states)
    write_json(backup_dir / BACKUP_STATE, {"epoch": epoch, "weights": weights, "rng": rng})
    for path in backup_dir.iterdir():
        match = re.fullmatch(r"epoch-(\d+)\.(weights\.h5|rng\.npz)", path.name)
        if match and int(match.group(1)) != epoch:
            path.unlink(missing_ok=True)


def load_backup(model, backup_dir):
    """Restores what `save_backup` wrote into `model` (built, optimizer built); returns the
    epoch to restart at, or None without a backup.

    Raises:
        ValueError: the backup does not fit the model (another size, width or model),
            naming the folder, or its weights file is corrupt, naming the file.
    """
    state = _backup_state(backup_dir)
    if state is None:
        return None
    backup_dir = Path(backup_dir)
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    weights = backup_dir / state["weights"]
    try:
        model.load_weights(weights)
    except OSError as error:  # h5py: truncated, garbage or unreadable
        raise ValueError(
            f"The backup weights file {weights} cannot be read ({error}): it is corrupt or "
            f"truncated. Nothing was changed: the run's saved .keras models are intact; move "
            f"{backup_dir} aside to restart from epoch 0, or train with retrain.") from error
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"The backup in {backup_dir} does not fit this {type(model).__name__} "
                         f"(trained with other settings?): {error}") from error
    path = backup_dir / state["rng"]
    if path.is_file():
        with np.load(path) as saved:
            for i, generator in enumerate(_seed_generators(model)):
                if f"state_{i}" in saved:
                    generator.state.assign(saved[f"state_{i}"])
    return int(state["epoch"])
