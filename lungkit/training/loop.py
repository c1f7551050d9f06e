"""Resumable training of lungkit models: `fit`, `train` and the multi-worker loop.

- `train(build_model, dataset, ...)` builds and compiles the model inside
  `strategy.scope()` under the chosen precision (`lungkit.training.strategy`), then fits it.
- `fit(model, dataset, epochs, out_dir)` is `model.fit` with `default_callbacks` (last/best
  checkpoints, `BackupAndRestore`, CSV/TensorBoard logs, timing, NaN stop); a killed run
  started again with the same `out_dir` resumes at its last finished epoch, and the history
  it returns is read back from `history.csv`, so it covers every epoch exactly once. It
  sets the shuffle epoch of `make_dataset` datasets every epoch (`ShuffleEpoch`), so the
  resumed epochs see the data order of an uninterrupted run.
- `distributed_fit(...)` is the custom loop for `MultiWorkerMirroredStrategy`: Keras 3's
  `Model.fit` fails there on TF 2.21 (keras-team/keras#20585, "Attempt to convert a value
  (PerReplica...)"), so the loop calls each model's `gradient_step` through `strategy.run`.

Mixed precision: with "mixed_float16" Keras' `compile()` wraps the optimizer in a
`LossScaleOptimizer` by itself (keras/src/trainers/trainer.py, `auto_scale_loss=True`, when
the model's dtype policy is mixed_float16), and `GenerativeModel.gradient_step` calls
`optimizer.scale_loss`. Models keep their last layer and their losses in float32.
"""

import logging
import re
import shutil
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from lungkit.checks import SAVE_SECONDS, check_int
from lungkit.data.pipeline import set_shuffle_epoch
from lungkit.models.base import unpack_batch
from lungkit.models.registry import model_name
from lungkit.training.callbacks import ShuffleEpoch, default_callbacks
from lungkit.training.lr_schedules import make_schedule
from lungkit.training.runs import (
    BACKUP_DIR,
    HISTORY_FILE,
    RunRecord,
    backup_epoch,
    load_backup,
    plan_run,
    read_history,
    remove_interrupted_writes,
    run_settings,
    save_backup,
    save_model,
    trim_history,
    write_history,
)
from lungkit.training.strategy import (
    check_jit,
    get_strategy,
    is_chief,
    is_multiworker,
    set_precision,
)

logger = logging.getLogger(__name__)

def batch_size_of(dataset):
    """The (global) batch size of a batched `tf.data.Dataset`: static, else its first batch."""
    spec = dataset.element_spec
    spec = spec[0] if isinstance(spec, (tuple, list)) else spec
    if spec.shape.rank and spec.shape[0] is not None:
        return int(spec.shape[0])
    images, _ = unpack_batch(next(iter(dataset.take(1))))
    return int(images.shape[0])


class TrainingHistory(dict):
    """Per-epoch lists `{key: [...]}` read from `history.csv`, continuous across resumes.

    Also answers `.history` and `.epoch` like `keras.callbacks.History`.
    """

    @property
    def history(self):
        return self

    @property
    def epoch(self):
        return list(self.get("epoch", []))


def _history(out_dir):
    history = read_history(Path(out_dir) / HISTORY_FILE)
    return TrainingHistory({key: value for key, value in history.items()
                            if not all(np.isnan(v) for v in value) or key == "epoch"})


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or a notebook interrupt) during `fit`: the message says what finished, where
    it is saved and how to resume. IPython shows only the message (`_render_traceback_`)."""

    def _render_traceback_(self):
        return [str(self)]


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; the message names the file with the last good weights."""


def _data_fingerprint(dataset):
    """What `make_dataset` attached (a hash of its data and options), or None."""
    return getattr(dataset, "fingerprint", None)


def fit(model, dataset, epochs, out_dir, name=None, validation_data=None, callbacks=(),
        strategy=None, steps_per_epoch=None, verbose="auto", initial_epoch=0,
        images_per_epoch=None, tensorboard=True, save_every=1, save_seconds=SAVE_SECONDS,
        retrain=False):
    """Trains a compiled model with lungkit's resumable callbacks; a finished run is loaded.

    What happens is decided by the run record in `out_dir` (`lungkit.training.runs`): a new
    folder trains from the start; an interrupted run resumes from its backup; a finished run
    with the same settings and data is loaded (nothing is trained) or, asked for more epochs,
    continued; a run with other settings is refused, naming the differences, unless
    `retrain`. Models with stages (`LatentDiffusion` trains its autoencoder first) get each
    stage trained (and reused) in `out_dir/<stage>` before their own training.

    Args:
        model: a compiled `keras.Model` (for a strategy: built in its scope).
        dataset: batched `tf.data.Dataset` of images in [0, 1] or `(images, labels)`.
        epochs: the total number of epochs, counting those done before a resume.
        out_dir: run folder (see `lungkit.training.callbacks` for what it receives).
        name: model file stem; default `model.name`.
        validation_data: optional dataset; then the best model follows `val_loss`.
        callbacks: extra callbacks, run after lungkit's.
        strategy: the Strategy the model was built under (default: the model's own); a
            multi-worker one runs `distributed_fit`, as `Model.fit` fails there.
        steps_per_epoch, verbose, initial_epoch: as in `keras.Model.fit`.
        images_per_epoch: exact image count per epoch for the timing (default: the
            dataset's `image_count` from `make_dataset`, else batches x batch size).
        tensorboard: also write TensorBoard logs.
        save_every, save_seconds: checkpoint (the models and the backup) once this many
            epochs and seconds have passed since the last checkpoint, and at the end; a crash
            repeats at most that much (`save_seconds=0`: every `save_every` epochs).
        retrain: False (the rule above), True (move an earlier run aside into
            `out_dir/replaced-<time>/` and start over) or "if_changed" (start over only when
            the settings differ).

    Returns:
        `TrainingHistory` with one entry per epoch 0..epochs-1, including `epoch_seconds`
        and `images_per_second`.

    Raises:
        TrainingInterrupted: on Ctrl-C, saying how to resume.
        TrainingDiverged: when the loss became non-finite (nothing diverged was saved).
        ValueError: bad arguments, or a folder holding another run (see above).
    """
    epochs = check_int("epochs", epochs)
    strategy = get_strategy(strategy) if strategy is not None else model.distribute_strategy
    check_jit(strategy, getattr(model, "jit_compile", None))  # compile(jit_compile=True)
    if is_multiworker(strategy):
        return distributed_fit(model, dataset, epochs, strategy, out_dir, name=name,
                               steps_per_epoch=steps_per_epoch, verbose=verbose != 0)
    name = name or default_run_name(model)
    out_dir = Path(out_dir)
    if hasattr(model, "compute_losses"):
        ensure_built(model, model.distribute_strategy, dataset)  # before the first trace
    batch_size = batch_size_of(dataset)
    record = RunRecord(out_dir, name)
    stages = [stage.name for stage in _stages(model)]
    settings = run_settings(model, batch_size, _data_fingerprint(dataset))
    action, done = plan_run(record, settings, epochs, retrain, stages)
    if action == "load":
        return _load_finished(model, out_dir, name, epochs, done)
    remove_interrupted_writes(out_dir, name)
    if action == "fresh":
        _train_stages(model, dataset, out_dir, epochs, verbose=verbose, retrain=retrain)
    else:
        _restore_stages(model)  # the backup holds what the stages made
    record.write(settings, epochs, done, finished=False, stages=stages)
    images_per_epoch = images_per_epoch or getattr(dataset, "image_count", None)
    defaults = default_callbacks(
        out_dir, name=name, monitor="val_loss" if validation_data is not None else "loss",
        batch_size=None if images_per_epoch else batch_size,
        images_per_epoch=images_per_epoch,
        tensorboard=tensorboard, initial_epoch=initial_epoch, save_every=save_every,
        save_seconds=save_seconds)
    model._initial_epoch = None  # an earlier restore must not leak into this run
    try:
        model.fit(dataset, epochs=epochs, validation_data=validation_data,
                  callbacks=[ShuffleEpoch(dataset, validation_data), *defaults, *callbacks],
                  steps_per_epoch=steps_per_epoch, verbose=verbose, initial_epoch=initial_epoch,
                  shuffle=False)  # the data shuffle themselves
    except KeyboardInterrupt as interrupt:
        raise TrainingInterrupted(_interrupted_message(out_dir, name, epochs)) from interrupt
    guard = defaults[1]
    if guard.diverged:
        raise TrainingDiverged(guard.message + " " + _last_good(out_dir, name))
    if getattr(model, "after_training", None) and model.after_training(dataset):
        save_model(model, out_dir / f"{name}.keras")  # e.g. a fitted class prior
    history = _history(out_dir)
    record.write(settings, epochs, len(history.get("epoch", [])), finished=True, stages=stages)
    if defaults[0].seconds_per_epoch:
        logger.info("Trained %s: %d epochs in %s; %s", name, len(history.get("epoch", [])),
                    out_dir, ", ".join(f"{k} {v:.3g}" for k, v in defaults[0].summary().items()))
    return history


def default_run_name(model):
    """A model's file stem when none is given: its registry name ("vae"), else its Keras name
    without the counter Keras appends to repeated names ("tiny_2" -> "tiny")."""
    return model_name(model) or re.sub(r"_\d+$", "", model.name)


def _stages(model):
    pending = getattr(model, "pending_stages", None)
    return list(pending()) if pending else []


def _train_stages(model, dataset, out_dir, epochs, **fit_kwargs):
    """Trains each pending stage of `model` as a run of its own in `out_dir/<stage>`."""
    for stage in _stages(model):
        optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
        with model.distribute_strategy.scope():  # a fresh copy of the compiled optimizer
            stage.model.compile(optimizer=type(optimizer).from_config(optimizer.get_config()))
        logger.info("Stage %s of %s: %d epochs", stage.name, model.name, stage.epochs or epochs)
        stage.start()
        try:
            fit(stage.model, dataset, stage.epochs or epochs, Path(out_dir) / stage.name,
                name=stage.name, **fit_kwargs)
        except BaseException:
            stage.finish(None)
            raise
        stage.finish(dataset)


def _restore_stages(model):
    restore = getattr(model, "restore_stages", None)
    if restore:
        restore()


def _load_finished(model, out_dir, name, epochs, done):
    """Loads the weights of the finished run in `out_dir`; returns its history."""
    path = out_dir / f"{name}.keras"
    model.load_weights(path)
    _restore_stages(model)
    if done > epochs:
        logger.warning("%s was trained to %d epochs, more than the %d asked for: loading it as "
                       "it is (retrain=True starts over)", path, done, epochs)
    logger.info("Loaded the finished run %s (%d epochs); nothing to train", path, done)
    return _history(out_dir)


def _last_good(out_dir, name):
    epoch = backup_epoch(Path(out_dir) / BACKUP_DIR)
    if not epoch:
        return "Nothing was saved: no epoch finished with a finite loss."
    return (f"The last good weights, after epoch {epoch}, are in {Path(out_dir) / name}.keras "
            f"and {Path(out_dir) / BACKUP_DIR}/, the best epoch's in "
            f"{Path(out_dir) / name}.best.keras; the diverged ones were not saved.")


def _interrupted_message(out_dir, name, epochs):
    epoch = backup_epoch(Path(out_dir) / BACKUP_DIR) or 0
    if epoch == 0:
        return (f"Training {name} interrupted before its first epoch finished: nothing was "
                f"saved in {out_dir}; running it again starts from the beginning.")
    return (f"Training {name} interrupted: {epoch} of {epochs} epochs finished and saved in "
            f"{out_dir} ({name}.keras, {BACKUP_DIR}/). Run the same command again (the same "
            f"out_dir) to resume at epoch {epoch + 1}.")


def train(build_model, dataset, *, epochs, out_dir, strategy="auto", precision="float32",
          jit=False, learning_rate=1e-3, optimizer="adam", batch_size=None,
          scale_learning_rate=False, name=None, lr_schedule="constant", warmup=0.0,
          **fit_kwargs):
    """Builds, compiles and trains a model under a strategy and a precision.

    Args:
        build_model: callable with no arguments returning an uncompiled model; called inside
            `strategy.scope()` with the precision policy set, so every variable is placed and
            typed right.
        dataset: a batched `tf.data.Dataset` (its batch is the global batch), or a callable
            `dataset(global_batch_size) -> Dataset` used with `batch_size`, called once the
            model is built (so a bad model argument fails before the data are read).
        epochs, out_dir, name, **fit_kwargs: as in `fit`.
        strategy: a name from `STRATEGIES` or a Strategy.
        precision: a name from `PRECISIONS`.
        jit: compile the train step with XLA (refused under a mirrored strategy with several
            replicas and under multi-worker, before the model is built: `check_jit`).
        learning_rate: Adam's (or `optimizer`'s) learning rate for the global batch.
        optimizer: a Keras optimizer identifier ("adam", "sgd", ...).
        batch_size: per-replica batch; the global batch is `batch_size x replicas`.
        scale_learning_rate: multiply `learning_rate` by the number of replicas (the linear
            scaling rule, Goyal et al. 2017) for runs that grow the global batch.
        lr_schedule, warmup: "constant", or "cosine" (linear warm-up over `warmup`, a fraction
            of the run or a number of steps, then cosine decay to 0 at epochs x steps per
            epoch; `lungkit.training.lr_schedules`; resumes with the optimizer's iterations).

    Returns:
        `(model, history)`.
    """
    strategy = get_strategy(strategy)
    check_jit(strategy, bool(jit))
    replicas = strategy.num_replicas_in_sync
    is_factory = callable(dataset) and not isinstance(dataset, tf.data.Dataset)
    if is_factory and batch_size is None:
        raise ValueError("`batch_size` is required when `dataset` is a callable.")
    if scale_learning_rate:
        learning_rate *= replicas
    previous = set_precision(precision)
    try:
        with strategy.scope():
            model = build_model()
            optimizer_class = type(keras.optimizers.get(optimizer))
            model.compile(optimizer=optimizer_class(learning_rate=learning_rate),
                          jit_compile=bool(jit))
    finally:
        set_precision(previous)  # the model keeps its policy; later models are unaffected
    if is_factory:  # read the data only once the model is built: bad settings fail first
        dataset = dataset(batch_size * replicas)
    if lr_schedule != "constant":
        _set_schedule(model, dataset, epochs, lr_schedule, learning_rate, warmup,
                      fit_kwargs.get("steps_per_epoch"))
    logger.info("Training %s: strategy %s (%d replica(s)), precision %s, jit %s, learning "
                "rate %g, global batch %s", model.name, type(strategy).__name__, replicas,
                precision, bool(jit), learning_rate,
                batch_size * replicas if batch_size else batch_size_of(dataset))
    history = fit(model, dataset, epochs, out_dir, name=name, strategy=strategy, **fit_kwargs)
    return model, history


def _set_schedule(model, dataset, epochs, kind, learning_rate, warmup, steps_per_epoch):
    """Gives the compiled optimizer a `make_schedule(kind, ...)` over the whole run."""
    steps = steps_per_epoch or int(dataset.cardinality())
    if steps < 1:
        raise ValueError(f"lr_schedule={kind!r} needs a finite dataset or `steps_per_epoch`. "
                         f"Received: a dataset of cardinality {steps}")
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    optimizer.learning_rate = make_schedule(kind, learning_rate, epochs * steps, warmup)


def ensure_built(model, strategy, dataset):
    """Creates every model and optimizer variable eagerly, in `strategy.scope()`."""
    with strategy.scope():
        if not model.built:
            images, labels = unpack_batch(next(iter(dataset.take(1))))
            model.compute_losses(images, labels, training=False)
            model.built = True
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)


def distributed_fit(model, dataset, epochs, strategy, out_dir, *, name=None,
                    steps_per_epoch=None, verbose=True):
    """Data-parallel training loop of our own (needed for `MultiWorkerMirroredStrategy`).

    Every worker runs this with the same arguments. Each step distributes a global batch,
    runs `model.gradient_step` on every replica with the replica's mean loss divided by the
    number of replicas (the optimizer sums the replicas' gradients: their mean results), and
    averages the losses for the logs. The chief writes `<name>.keras` and `history.csv`;
    other workers save into a temporary folder that they delete (the standard pattern, as
    saving may take part in collective ops). Each worker keeps its own backup (weights,
    optimizer, RNG states) and resumes from it after a crash; the shuffle epoch of a
    `make_dataset` dataset is set every epoch, as `fit` does.

    Args:
        model: a `GenerativeModel` built (or buildable) and compiled in `strategy.scope()`.
        dataset: batched `tf.data.Dataset` with the global batch, identical on every worker.
        epochs: total epochs; out_dir, name: as in `fit`.
        steps_per_epoch: steps per epoch (default: one pass over the dataset).
        verbose: log one line per epoch.

    Returns:
        `TrainingHistory` (the chief's; other workers get their in-memory history).
    """
    name, out_dir, chief = name or default_run_name(model), Path(out_dir), is_chief(strategy)
    replicas = strategy.num_replicas_in_sync
    ensure_built(model, strategy, dataset)
    task = getattr(strategy.cluster_resolver, "task_id", 0) or 0
    backup = out_dir / (BACKUP_DIR if chief else f"{BACKUP_DIR}_worker{task}")
    start = load_backup(model, backup) or 0  # weights, optimizer and RNG states
    if start:
        logger.info("Resuming from %s at epoch %d", backup, start)
    history = TrainingHistory(trim_history(out_dir / HISTORY_FILE, start) if chief else {})

    def replica_step(batch):
        images, labels = unpack_batch(batch)
        return tuple(model.gradient_step(images, labels, loss_divisor=replicas))

    @tf.function(reduce_retracing=True)
    def train_step(batch):
        losses = strategy.run(replica_step, args=(batch,))
        return [strategy.reduce(tf.distribute.ReduceOp.MEAN, loss, axis=None) for loss in losses]

    distributed = strategy.experimental_distribute_dataset(dataset)
    global_batch = batch_size_of(dataset)
    for epoch in range(start, epochs):
        set_shuffle_epoch(dataset, epoch)  # the order of epoch `epoch`, resumed or not
        started, step_losses = time.perf_counter(), []
        for step, batch in enumerate(distributed):
            if steps_per_epoch is not None and step >= steps_per_epoch:
                break
            step_losses.append([float(x) for x in train_step(batch)])
        seconds = time.perf_counter() - started
        logs = dict(zip(model.loss_names, np.mean(step_losses, axis=0).tolist(), strict=True))
        logs.update(epoch_seconds=seconds,
                    images_per_second=len(step_losses) * global_batch / seconds)
        for key, value in {"epoch": epoch, **logs}.items():
            history.setdefault(key, []).append(value)
        _save_epoch(model, out_dir, name, history, chief)
        save_backup(model, backup, epoch + 1)
        if verbose:
            logger.info("epoch %d/%d: %s", epoch + 1, epochs,
                        ", ".join(f"{k} {v:.4g}" for k, v in logs.items()))
    set_shuffle_epoch(dataset, epochs, advance=True)  # plain loops reshuffle again
    return _history(out_dir) if chief else history


def _save_epoch(model, out_dir, name, history, chief):
    """Chief: the model and the history. Others: save to a temporary folder, delete it
    (saving may take part in collective ops, so every worker saves)."""
    if not chief:
        temp = Path(tempfile.mkdtemp(prefix="lungkit_worker_"))
        model.save(temp / f"{name}.keras")
        shutil.rmtree(temp, ignore_errors=True)
        return
    save_model(model, out_dir / f"{name}.keras")
    write_history(out_dir / HISTORY_FILE, history)
