"""Training callbacks: timing, a NaN stop that says what to change, history, models, backup.

They write the files of a run through `lungkit.training.runs`, which owns their formats. A
run folder holds:

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
4. `Checkpoint` comes last: the best and the last model, then the backup, every `save_every`
   epochs and `save_seconds` seconds; a kill after the history row but before the backup repeats that
   epoch and replaces its row; the reverse order could lose a row.

`lungkit.training.fit` adds `ShuffleEpoch`, which sets the epoch of `make_dataset` datasets
before every epoch, so a resumed epoch `k` is shuffled as in an uninterrupted run.
"""

import importlib.util
import logging
import math
import time
from pathlib import Path

import keras
import numpy as np

from lungkit.checks import SAVE_SECONDS, check_choice, check_int, check_number
from lungkit.data.pipeline import set_shuffle_epoch
from lungkit.training.runs import (
    BACKUP_DIR,
    HISTORY_FILE,
    backup_epoch,
    load_backup,
    read_history,
    save_backup,
    save_model,
    trim_history,
    write_history,
)

logger = logging.getLogger(__name__)



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
class Checkpoint(keras.callbacks.Callback):
    """Writes a run's model files and its backup together, cheaply; restores the backup first.

    A checkpoint is `<name>.best.keras` (when the monitored value reached a new finite best
    since the last checkpoint), `<name>.keras`, then the backup (weights, optimizer, RNG
    states; `lungkit.training.runs.save_backup`). It is written at the end of an epoch once
    `save_every` epochs and `save_seconds` seconds have passed since the last one, after the
    last epoch, and when training stops early; so a crash repeats at most that much training.
    The best epoch's weights are copied in memory (a few milliseconds) and written with the
    next checkpoint, so the best model is exact without a file write per improvement.

    Keras' `BackupAndRestore` writes in place and skips `SeedGenerator` states, so a resumed
    VAE would redraw the noise of earlier epochs; this keeps both, atomically. Nothing is
    written once a loss has become non-finite, except a pending best model (finite by
    construction), so the last good weights are on disk when the run stops.
    """

    def __init__(self, out_dir, name="model", monitor="loss", mode="min", save_every=1,
                 save_seconds=0.0, guard=None):
        super().__init__()
        out_dir = Path(out_dir)
        self.path, self.best_path = out_dir / f"{name}.keras", out_dir / f"{name}.best.keras"
        self.backup_dir, self.history_path = out_dir / BACKUP_DIR, out_dir / HISTORY_FILE
        self.monitor, self.mode, self.guard = monitor, mode, guard
        self.save_every, self.save_seconds = save_every, save_seconds
        self.best, self.saved_epochs = None, []

    def on_train_begin(self, logs=None):
        epoch = load_backup(self.model, self.backup_dir)
        if epoch is not None:
            logger.info("Resuming from the backup in %s at epoch %d", self.backup_dir, epoch)
            self.model._initial_epoch = epoch
        values = [v for v in read_history(self.history_path).get(self.monitor, [])
                  if math.isfinite(v)]
        self.best = (max if self.mode == "max" else min)(values) if values else None
        self._best_weights = self._epoch = None
        self._since, self._clock = 0, time.monotonic()

    def _improved(self, value):
        if value is None or not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def _diverged(self):
        return self.guard is not None and self.guard.diverged

    def on_epoch_end(self, epoch, logs=None):
        if self._diverged():
            return
        value = (logs or {}).get(self.monitor)
        value = None if value is None else float(value)
        self._epoch, self._since = epoch, self._since + 1
        last = epoch + 1 >= self.params.get("epochs", 0)
        due = last or (self._since >= self.save_every
                       and time.monotonic() - self._clock >= self.save_seconds)
        if self._improved(value):
            self.best = value
            self._best_weights = "current" if due else self.model.get_weights()
        if due:
            self._write()

    def on_train_end(self, logs=None):
        if self._diverged():
            self._write_best()
        elif self._since:  # stopped early (e.g. `model.stop_training`)
            self._write()

    def _write_best(self):
        if self._best_weights is None:
            return
        if isinstance(self._best_weights, str):
            save_model(self.model, self.best_path)
        else:
            current = self.model.get_weights()
            self.model.set_weights(self._best_weights)
            try:
                save_model(self.model, self.best_path)
            finally:
                self.model.set_weights(current)
        self._best_weights = None

    def _write(self):
        self._write_best()
        save_model(self.model, self.path)
        save_backup(self.model, self.backup_dir, self._epoch + 1)
        self.saved_epochs.append(self._epoch + 1)
        self._since, self._clock = 0, time.monotonic()


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
                      images_per_epoch=None, tensorboard=True, initial_epoch=0, save_every=1,
                      save_seconds=SAVE_SECONDS):
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
        save_every, save_seconds: checkpoint (models and backup) once this many epochs and
            seconds have passed since the last checkpoint, and after the last epoch; a crash
            repeats at most that much training. 0 seconds checkpoints every `save_every`
            epochs. The default keeps checkpoints to a few percent of the training time.

    Returns:
        list of callbacks for `model.fit(callbacks=...)`; add your own after them.
    """
    save_every = check_int("save_every", save_every)
    save_seconds = check_number("save_seconds", save_seconds, low=0)
    check_choice("mode", mode, ("min", "max"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    guard = FriendlyTerminateOnNaN()
    callbacks = [
        TimingCallback(batch_size=batch_size, images_per_epoch=images_per_epoch),
        guard,
        HistoryLogger(out_dir / HISTORY_FILE, out_dir / BACKUP_DIR, initial_epoch=initial_epoch),
    ]
    if tensorboard and importlib.util.find_spec("tensorboard") is None:
        logger.info("TensorBoard logs skipped: the `tensorboard` package is not installed")
    elif tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(out_dir / "logs", write_graph=False,
                                                     update_freq="epoch", profile_batch=0))
    callbacks.append(Checkpoint(out_dir, name, monitor=monitor, mode=mode, save_every=save_every,
                                save_seconds=save_seconds, guard=guard))
    return callbacks
