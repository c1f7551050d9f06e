"""Training callbacks and the files of a run: timing, NaN stop, history, checkpoints, backup.

The only code that reads and writes a run's backup and history rows. Every file is written
to a temporary name and renamed (`lungkit.files.atomic_path`), so a kill or a full disk at
any instant leaves the previous version of each file intact.

A run folder holds:

    <name>.keras          the model after the last saved epoch (for `load_model`)
    <name>.best.keras     the model at the best finite value of the monitored loss
    history.csv           one row per finished epoch, exactly once each
    backup/               weights and optimizer (`epoch-<k>.weights.h5`), RNG states
                          (`epoch-<k>.rng.npz`) and `state.json`, which names them: the
                          point from which a killed run resumes, kept after training so a
                          finished run can be continued with more epochs
    logs/                 TensorBoard scalars (when tensorboard is installed)

`default_callbacks(out_dir)` is the set every lungkit run uses, in this order:

1. `TimingCallback` writes `epoch_seconds` and `images_per_second` into the epoch logs.
2. `FriendlyTerminateOnNaN` stops at a non-finite loss and says what to change; the savers
   below then keep the last good files instead of writing the diverged weights.
3. `HistoryLogger` rewrites `history.csv` with one more row; at the start of a run it drops
   rows that the restored backup will train again, so every epoch appears once.
4. `ModelSaver`s: the last and the best model.
5. `RunBackup` comes last: a kill after the history row but before the backup repeats that
   epoch and replaces its row; the reverse order could lose a row.

`lungkit.training.fit` adds `ShuffleEpoch`, which sets the epoch of `make_dataset` datasets
before every epoch, so a resumed epoch `k` is shuffled as in an uninterrupted run.
"""

import csv
import importlib.util
import io
import logging
import math
import re
import time
from pathlib import Path

import keras
import numpy as np

from lungkit.checks import check_choice, check_int
from lungkit.data.pipeline import set_shuffle_epoch
from lungkit.files import atomic_path, read_json, write_json, write_text

logger = logging.getLogger(__name__)

HISTORY_FILE = "history.csv"
BACKUP_DIR = "backup"
BACKUP_STATE = "state.json"  # names the newest complete backup; written last (the commit)
BACKUP_PATTERN = re.compile(r"epoch-(\d+)\.weights\.h5")


class TimingCallback(keras.callbacks.Callback):
    """Records wall-clock seconds and training images per second for every epoch.

    The first epoch of a run includes tracing and compilation; it is kept in the lists and
    also reported on its own (`first_epoch_seconds`), and `summary()` averages the others.
    Both values go into the epoch logs as `epoch_seconds` and `images_per_second`.

    Args:
        batch_size: images per batch (global batch under a strategy), used when
            `images_per_epoch` is not given: images = batches seen x batch_size.
        images_per_epoch: exact number of training images per epoch, if known.
    """

    def __init__(self, batch_size=None, images_per_epoch=None):
        super().__init__()
        self.batch_size, self.images_per_epoch = batch_size, images_per_epoch
        self.seconds_per_epoch, self.images_per_second = [], []
        self.first_epoch_seconds = None

    def on_train_begin(self, logs=None):
        self.seconds_per_epoch, self.images_per_second = [], []
        self.first_epoch_seconds = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._batches = time.perf_counter(), 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches = batch + 1  # batch is the index of the last step run in this epoch

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        images = self.images_per_epoch or (self._batches * (self.batch_size or 0))
        rate = images / seconds if images and seconds > 0 else float("nan")
        if self.first_epoch_seconds is None:
            self.first_epoch_seconds = seconds
        self.seconds_per_epoch.append(seconds)
        self.images_per_second.append(rate)
        if logs is not None:
            logs["epoch_seconds"], logs["images_per_second"] = seconds, rate

    def summary(self):
        """Returns `{"first_epoch_seconds", "seconds_per_epoch", "images_per_second"}`: the
        last two are means over the epochs after the first (over all, if only one ran)."""
        steady = slice(1, None) if len(self.seconds_per_epoch) > 1 else slice(None)
        return {
            "first_epoch_seconds": self.first_epoch_seconds,
            "seconds_per_epoch": float(np.mean(self.seconds_per_epoch[steady] or [np.nan])),
            "images_per_second": float(np.mean(self.images_per_second[steady] or [np.nan])),
        }


class FriendlyTerminateOnNaN(keras.callbacks.Callback):
    """Stops training at the first NaN or infinite loss and logs what to change.

    After it fires, `message` holds the explanation and `stopped_at` is `(epoch, batch)`;
    `diverged` tells the savers to keep the last good files.
    """

    def __init__(self, monitor="loss"):
        super().__init__()
        self.monitor, self.message, self.stopped_at = monitor, None, None

    @property
    def diverged(self):
        return self.stopped_at is not None

    def on_train_begin(self, logs=None):
        self.message, self.stopped_at = None, None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or math.isfinite(float(value)):
            return
        self.model.stop_training = True
        self.stopped_at = (getattr(self, "_epoch", 0), batch)
        optimizer = getattr(self.model, "optimizer", None)
        rate = getattr(optimizer, "learning_rate", None)
        rate = f"{float(keras.ops.convert_to_numpy(rate)):.3g}" if rate is not None else "?"
        policy = keras.config.dtype_policy().name
        self.message = (
            f"`{self.monitor}` became {float(value)} at epoch {self.stopped_at[0]}, batch "
            f"{batch}; training stopped. To fix it: lower the learning rate (now {rate}; try "
            "10x smaller); check the images are float32 in [0, 1] (not 0-255) and hold no "
            "NaN; " + (f"train in float32 instead of {policy} (--precision float32)"
                       if policy != "float32" else "clip gradients (optimizer clipnorm=1.0)")
            + ".")
        logger.error("%s", self.message)

    def on_epoch_end(self, epoch, logs=None):
        if not self.diverged and logs and self.monitor in logs \
                and not math.isfinite(float(logs[self.monitor])):
            self.on_train_batch_end(-1, logs)  # a loss that went bad in the epoch's mean


# --- history ---------------------------------------------------------------------------------
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


class HistoryLogger(keras.callbacks.Callback):
    """Writes `history.csv`: one row per epoch, the whole file rewritten atomically each time.

    At the start it keeps the rows of the epochs before the one training resumes at (the
    backup's epoch, or `initial_epoch` for a fresh run: rows of a replaced run are dropped).
    Only the keys present in the logs are written (no empty `val_*` columns).
    """

    def __init__(self, path, backup_dir, initial_epoch=0):
        super().__init__()
        self.path, self.backup_dir, self.initial_epoch = Path(path), backup_dir, initial_epoch

    def on_train_begin(self, logs=None):
        start = backup_epoch(self.backup_dir)
        self.history = trim_history(self.path, self.initial_epoch if start is None else start)

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}}
        done = len(self.history.get("epoch", []))
        for key in row:
            self.history.setdefault(key, [float("nan")] * done)
        for key, column in self.history.items():
            column.append(row.get(key, float("nan")))
        write_history(self.path, self.history)


# --- checkpoints -----------------------------------------------------------------------------
def save_model(model, path):
    """`model.save(path)` through a temporary file (Keras writes its target in place)."""
    with atomic_path(path) as temporary:
        model.save(temporary)
    return Path(path)


def _due(callback, epoch):
    """True when a callback with `save_every` saves at the end of `epoch` (and at the last)."""
    return (epoch + 1) % callback.save_every == 0 or epoch + 1 >= callback.params.get("epochs", 0)


class ModelSaver(keras.callbacks.Callback):
    """Saves `<name>.keras` every `save_every` epochs and at the last, or, with `monitor`, the
    model whenever the monitored value reaches a new finite best (re-read from the history
    after a resume). Nothing is saved once a loss has become non-finite.
    """

    def __init__(self, path, history_path, save_every=1, monitor=None, mode="min", guard=None):
        super().__init__()
        self.path, self.history_path = Path(path), Path(history_path)
        self.save_every, self.monitor, self.mode, self.guard = save_every, monitor, mode, guard
        self.best = None

    def on_train_begin(self, logs=None):
        if self.monitor is None:
            return
        values = [v for v in read_history(self.history_path).get(self.monitor, [])
                  if math.isfinite(v)]
        self.best = (max if self.mode == "max" else min)(values) if values else None

    def _improved(self, value):
        if value is None or not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def on_epoch_end(self, epoch, logs=None):
        if self.guard is not None and self.guard.diverged:
            return
        if self.monitor is None:
            if _due(self, epoch):
                save_model(self.model, self.path)
            return
        value = (logs or {}).get(self.monitor)
        if self._improved(None if value is None else float(value)):
            self.best = float(value)
            save_model(self.model, self.path)


# --- backup ----------------------------------------------------------------------------------
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
            naming the folder.
    """
    state = _backup_state(backup_dir)
    if state is None:
        return None
    backup_dir = Path(backup_dir)
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    try:
        model.load_weights(backup_dir / state["weights"])
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


class RunBackup(keras.callbacks.Callback):
    """Backs up the run every `save_every` epochs (and after the last); restores it first.

    Keras' `BackupAndRestore` writes in place and skips `SeedGenerator` states, so a resumed
    VAE would redraw the noise of earlier epochs; this keeps both, atomically.
    """

    def __init__(self, backup_dir, save_every=1, guard=None):
        super().__init__()
        self.backup_dir, self.save_every, self.guard = Path(backup_dir), save_every, guard

    def on_train_begin(self, logs=None):
        epoch = load_backup(self.model, self.backup_dir)
        if epoch is not None:
            logger.info("Resuming from the backup in %s at epoch %d", self.backup_dir, epoch)
            self.model._initial_epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if _due(self, epoch) and not (self.guard is not None and self.guard.diverged):
            save_backup(self.model, self.backup_dir, epoch + 1)


class ShuffleEpoch(keras.callbacks.Callback):
    """Pins the shuffle order of `make_dataset` datasets to the epoch number.

    Their order is a pure function of `(seed, epoch)`; this sets the epoch before every
    epoch (so a resumed run restarted at epoch `k` shuffles epoch `k` as an uninterrupted
    one did, and no extra iterator moves it on), and at the end leaves each dataset on the
    next epoch, advancing by itself again. Datasets without a shuffle epoch are ignored.

    Args:
        *datasets: the training (and validation) datasets given to `fit`.
    """

    def __init__(self, *datasets):
        super().__init__()
        self.datasets = [d for d in datasets if getattr(d, "epoch_variable", None) is not None]
        self._next_epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        for dataset in self.datasets:
            set_shuffle_epoch(dataset, epoch)
        self._next_epoch = epoch + 1

    def on_train_end(self, logs=None):
        for dataset in self.datasets:
            set_shuffle_epoch(dataset, self._next_epoch, advance=True)


def default_callbacks(out_dir, name="model", monitor="loss", mode="min", batch_size=None,
                      images_per_epoch=None, tensorboard=True, initial_epoch=0, save_every=1):
    """The callbacks of a resumable lungkit run, in the order explained in the module doc.

    Args:
        out_dir: run folder (see the module doc for what it receives).
        name: file stem of the models.
        monitor: epoch log key that picks the best model (`"val_loss"` with validation).
        mode: `"min"` or `"max"` for `monitor`.
        batch_size, images_per_epoch: passed to `TimingCallback`.
        tensorboard: also write TensorBoard logs to `out_dir/logs` (epoch scalars only),
            when the `tensorboard` package is installed.
        initial_epoch: the `initial_epoch` given to `fit`, where a fresh history starts.
        save_every: save the last model and the backup every this many epochs (and after
            the last); a crash then repeats up to `save_every - 1` epochs.

    Returns:
        list of callbacks for `model.fit(callbacks=...)`; add your own after them.
    """
    save_every = check_int("save_every", save_every)
    check_choice("mode", mode, ("min", "max"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    backup_dir, history_path = out_dir / BACKUP_DIR, out_dir / HISTORY_FILE
    guard = FriendlyTerminateOnNaN()
    callbacks = [
        TimingCallback(batch_size=batch_size, images_per_epoch=images_per_epoch),
        guard,
        HistoryLogger(history_path, backup_dir, initial_epoch=initial_epoch),
        ModelSaver(out_dir / f"{name}.keras", history_path, save_every, guard=guard),
        ModelSaver(out_dir / f"{name}.best.keras", history_path, monitor=monitor, mode=mode,
                   guard=guard),
    ]
    if tensorboard and importlib.util.find_spec("tensorboard") is None:
        logger.info("TensorBoard logs skipped: the `tensorboard` package is not installed")
    elif tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(out_dir / "logs", write_graph=False,
                                                     update_freq="epoch", profile_batch=0))
    callbacks.append(RunBackup(backup_dir, save_every, guard=guard))
    return callbacks
