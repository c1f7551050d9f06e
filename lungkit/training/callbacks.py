"""Training callbacks: timing, a NaN stop that says what to change, and crash-safe resume.

`default_callbacks(out_dir)` is the set every lungkit run uses. Its order matters and is
chosen for a process that may be SIGKILLed at any instant (a Colab session dropping):

1. `TimingCallback` writes `epoch_seconds` and `images_per_second` into the epoch logs,
   so the CSV logger (next) records them.
2. `ResumableCSVLogger` appends one row per epoch to `history.csv`; at the start of a run it
   first drops rows that the restored backup will train again, so every epoch appears once.
3. `ModelCheckpoint`s: the last model (`<name>.keras`) and the best one (`<name>.best.keras`),
   whose "best so far" is re-read from the history after a resume.
4. `ResumableBackup` (Keras `BackupAndRestore` plus the models' RNG states) comes last: a
   kill after the CSV row but before the backup just repeats that epoch, and its row is
   replaced; the reverse order could lose a row.

`lungkit.training.fit` adds `ShuffleEpoch`, which sets the epoch of `make_dataset` datasets
before every epoch, so a resumed epoch `k` is shuffled as in an uninterrupted run.
"""

import csv
import importlib.util
import json
import logging
import math
import time
from pathlib import Path

import keras
import numpy as np

from lungkit.data.pipeline import set_shuffle_epoch

logger = logging.getLogger(__name__)

HISTORY_FILE = "history.csv"
BACKUP_DIR = "backup"
RNG_STATE_FILE = "rng_state.npz"  # SeedGenerator states: Keras' backup does not save them


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

    After it fires, `message` holds the explanation and `stopped_at` is `(epoch, batch)`.
    """

    def __init__(self, monitor="loss"):
        super().__init__()
        self.monitor, self.message, self.stopped_at = monitor, None, None

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
            + "; the last good weights are in the checkpoint of the previous epoch.")
        logger.error("%s", self.message)


def resume_epoch(backup_dir):
    """The epoch a run backed up in `backup_dir` restarts at, or None without a backup."""
    path = Path(backup_dir) / "training_metadata.json"
    if not path.exists():
        return None
    return int(json.loads(path.read_text())["epoch"])


def read_history(path):
    """Reads a CSVLogger file into `{column: list of floats}` (epoch as int), in file order."""
    path = Path(path)
    if not path.exists():
        return {}
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    history = {}
    for row in rows:
        for key, value in row.items():
            try:
                value = int(value) if key == "epoch" else float(value)
            except (TypeError, ValueError):  # "NA" or a blank cell
                value = float("nan")
            history.setdefault(key, []).append(value)
    return history


def trim_history(path, start_epoch):
    """Keeps only the rows of `path` with `epoch < start_epoch` (header kept); returns them."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    kept = [row for row in rows if int(row["epoch"]) < start_epoch]
    if len(kept) != len(rows):
        logger.info("History: dropping %d row(s) from epoch %d on, which will be trained "
                    "again", len(rows) - len(kept), start_epoch)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)
    return kept


class ResumableCSVLogger(keras.callbacks.CSVLogger):
    """`CSVLogger` in append mode that first removes rows a resumed run will redo.

    It also writes only the keys present in the logs (Keras adds empty `val_*` columns).

    The run restarts at the epoch saved in `backup_dir` (or at `initial_epoch` without a
    backup, 0 for a fresh run: older rows from a finished run are dropped), so the file ends
    with each epoch exactly once.
    """

    def __init__(self, filename, backup_dir, initial_epoch=0):
        super().__init__(filename, append=True)
        self.backup_dir, self.initial_epoch = backup_dir, initial_epoch

    def on_train_begin(self, logs=None):
        start = resume_epoch(self.backup_dir)
        trim_history(self.filename, self.initial_epoch if start is None else start)
        super().on_train_begin(logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.keys is None and logs:  # without validation, no empty "val_*" columns of NA
            self.keys = sorted(logs)
        super().on_epoch_end(epoch, logs)


class ResumableCheckpoint(keras.callbacks.ModelCheckpoint):
    """`ModelCheckpoint` whose best value survives a restart (read back from the history)."""

    def __init__(self, filepath, history_path, save_every=1, **kwargs):
        super().__init__(filepath, **kwargs)
        self.history_path, self.save_every = history_path, save_every

    def on_epoch_end(self, epoch, logs=None):
        if _due(self, epoch):
            super().on_epoch_end(epoch, logs)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        values = [v for v in read_history(self.history_path).get(self.monitor, [])
                  if math.isfinite(v)]
        if self.save_best_only and values:
            self.best = max(values) if self.mode == "max" else min(values)


def _due(callback, epoch):
    """True when a callback with `save_every` saves at the end of `epoch` (and at the last)."""
    return (epoch + 1) % callback.save_every == 0 or epoch + 1 >= callback.params.get("epochs", 0)


def _seed_generators(model):
    """Every `keras.random.SeedGenerator` owned by `model` or its layers, in a fixed order."""
    generators, seen = [], set()
    for layer in model._flatten_layers(include_self=True):
        for generator in getattr(layer, "_seed_generators", []):
            if id(generator) not in seen:
                seen.add(id(generator))
                generators.append(generator)
    return generators


def save_rng_states(model, backup_dir):
    """Writes the states of the model's `SeedGenerator`s to `backup_dir/rng_state.npz`."""
    states = {f"state_{i}": keras.ops.convert_to_numpy(g.state)
              for i, g in enumerate(_seed_generators(model))}
    np.savez(Path(backup_dir) / RNG_STATE_FILE, **states)


def restore_rng_states(model, backup_dir):
    """Restores what `save_rng_states` wrote (same model structure); False without a file."""
    path = Path(backup_dir) / RNG_STATE_FILE
    if not path.exists():
        return False
    states = np.load(path)
    for i, generator in enumerate(_seed_generators(model)):
        if f"state_{i}" in states:
            generator.state.assign(states[f"state_{i}"])
    return True


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


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` (weights, optimizer, epoch) that also restores the RNG states.

    Keras' backup skips `SeedGenerator` states, so a resumed VAE would redraw the noise of
    earlier epochs; this saves them beside the weights. The data order is restored by
    `ShuffleEpoch` (the order of a `make_dataset` pass depends on the epoch only).
    """

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        epoch = resume_epoch(self.backup_dir)
        if epoch is None:
            return
        logger.info("Resuming from the backup in %s at epoch %d", self.backup_dir, epoch)
        restore_rng_states(self.model, self.backup_dir)

    def __init__(self, backup_dir, save_every=1, **kwargs):
        super().__init__(backup_dir, **kwargs)
        self.save_every = save_every

    def on_epoch_end(self, epoch, logs=None):
        if not _due(self, epoch):
            return
        super().on_epoch_end(epoch, logs)
        if self.save_freq == "epoch":
            save_rng_states(self.model, self.backup_dir)


def default_callbacks(out_dir, name="model", monitor="loss", mode="min", batch_size=None,
                      images_per_epoch=None, tensorboard=True, initial_epoch=0, save_every=1):
    """The callbacks of a resumable lungkit run, in the order explained in the module doc.

    Args:
        out_dir: run folder; receives `<name>.keras` (last), `<name>.best.keras` (best by
            `monitor`), `history.csv`, `backup/` (deleted when the run ends) and `logs/`.
        name: file stem of the checkpoints.
        monitor: epoch log key that picks the best checkpoint (`"val_loss"` with validation).
        mode: `"min"` or `"max"` for `monitor`.
        batch_size, images_per_epoch: passed to `TimingCallback`.
        tensorboard: also write TensorBoard logs to `out_dir/logs` (epoch scalars only),
            when the `tensorboard` package is installed (Colab has it).
        initial_epoch: the `initial_epoch` given to `fit`, where a fresh history starts.
        save_every: write checkpoints and the backup every this many epochs (and after the
            last): each save of a 128 px VAE costs about 0.3 s, which matters for short
            epochs; a crash then repeats up to `save_every - 1` epochs.

    Returns:
        list of callbacks for `model.fit(callbacks=...)`; add your own after them.
    """
    if isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 1:
        raise ValueError(f"`save_every` must be an integer >= 1. Received: "
                         f"save_every={save_every!r}")
    if mode not in ("min", "max"):
        raise ValueError(f"`mode` must be 'min' or 'max'. Received: mode={mode!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    backup_dir, history_path = out_dir / BACKUP_DIR, out_dir / HISTORY_FILE
    callbacks = [
        TimingCallback(batch_size=batch_size, images_per_epoch=images_per_epoch),
        FriendlyTerminateOnNaN(),
        ResumableCSVLogger(history_path, backup_dir, initial_epoch=initial_epoch),
        ResumableCheckpoint(out_dir / f"{name}.keras", history_path, save_every, verbose=0),
        ResumableCheckpoint(out_dir / f"{name}.best.keras", history_path, save_every,
                            monitor=monitor, mode=mode, save_best_only=True, verbose=0),
    ]
    if tensorboard and importlib.util.find_spec("tensorboard") is None:
        logger.info("TensorBoard logs skipped: the `tensorboard` package is not installed")
    elif tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(out_dir / "logs", write_graph=False,
                                                     update_freq="epoch", profile_batch=0))
    callbacks.append(ResumableBackup(backup_dir, save_every, double_checkpoint=True))
    return callbacks
