"""Shared timing helpers for the benchmarks: epoch timers, a bare step, paired comparisons.

The benchmarks compare `model.fit` with a plain compiled step on a machine that may be
shared with other work. The method, used by `vae_throughput.py` and `scale.py`:

- each side (fit, bare step, another input pipeline, another precision...) trains its own
  copy of the model; the sides take turns, one epoch each, so that a change in the load
  from other processes hits every side alike;
- the first epoch of each side is a warm-up (tracing, compilation, cache filling) and is
  not timed; a side's speed is its fastest timed epoch, the least disturbed one;
- besides wall-clock time, the process CPU time of each epoch is kept: it measures the work
  done and barely moves with the load from other processes.
"""

import os
import resource
import statistics
import time
from pathlib import Path

import keras
import tensorflow as tf


class EpochTimer(keras.callbacks.Callback):
    """Wall-clock and process CPU seconds of each epoch (`on_epoch_begin` to `on_epoch_end`)."""

    def __init__(self):
        super().__init__()
        self.seconds, self.cpu_seconds = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._cpu_start = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        self.cpu_seconds.append(time.process_time() - self._cpu_start)


def make_bare_step(model, optimizer, jit_compile=False):
    """A plain compiled training step over a lungkit `GenerativeModel`'s own loss maths.

    It does what `GenerativeModel.gradient_step` does inside `fit`, without Keras' trainer:
    gradient tape over `model.compute_losses`, `optimizer.scale_loss` (a no-op unless the
    optimizer is a `LossScaleOptimizer`), `optimizer.apply`, then `model.after_train_step()`
    (the diffusion model's EMA update), so both sides do the same work per step.

    Args:
        model: a `GenerativeModel` (not compiled; its own copy, not the fit side's).
        optimizer: a Keras optimizer of the same type and settings as the fit side's.
        jit_compile: compile with XLA, as `compile(jit_compile=...)` does for fit.

    Returns:
        a `tf.function` taking a batch (images, or `(images, labels)`) and returning the
        total loss, a float32 scalar.
    """
    variables = model.trainable_variables
    optimizer.build(variables)

    @tf.function(jit_compile=jit_compile)
    def step(batch):
        images, labels = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
        with tf.GradientTape() as tape:
            loss = model.compute_losses(images, labels, training=True)[0]
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        optimizer.apply(grads, variables)
        # As called by gradient_step inside fit; not converted (its body may be empty).
        tf.autograph.experimental.do_not_convert(model.after_train_step)()
        return loss

    return step


def bare_epoch(step, dataset):
    """Runs `step` over `dataset` once; returns `(wall seconds, process CPU seconds)`.

    The window matches `EpochTimer`'s inside `fit`: it ends when the last step's loss is
    read, before the iterator is torn down (an autotuned tf.data iterator can block in its
    destructor until the autotuner wakes up, which `fit` never counts in an epoch).
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    iterator = iter(dataset)  # created inside the window, as fit creates its own
    loss = None
    for batch in iterator:
        loss = step(batch)
    if loss is not None:
        float(loss)  # wait for the last step, as fit does when it reads its logs
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    del iterator  # teardown outside the window
    return seconds, cpu_seconds


class Side:
    """One contestant of a paired comparison: a name and a function that runs one epoch.

    Args:
        name: label in the results.
        run_epoch: callable with no arguments that trains one epoch and returns
            `(wall seconds, CPU seconds)`.
        epochs: timed epochs for this side (after its warm-up epoch); sides that are slow
            on this machine (float16 on a CPU) may take fewer.
    """

    def __init__(self, name, run_epoch, epochs=None):
        self.name, self.run_epoch, self.epochs = name, run_epoch, epochs
        self.seconds, self.cpu_seconds = [], []

    @classmethod
    def fit(cls, name, model, dataset, epochs=None):
        """A side that trains a compiled model with `model.fit(dataset, epochs=1)`."""
        timer = EpochTimer()

        def run_epoch():
            model.fit(dataset, epochs=1, verbose=0, shuffle=False, callbacks=[timer])
            return timer.seconds[-1], timer.cpu_seconds[-1]

        return cls(name, run_epoch, epochs)

    @classmethod
    def bare(cls, name, step, dataset, epochs=None):
        """A side that runs a compiled step (`make_bare_step`) over the dataset."""
        return cls(name, lambda: bare_epoch(step, dataset), epochs)

    def best_seconds(self):
        return min(self.seconds[1:] or self.seconds)

    def best_cpu_seconds(self):
        return min(self.cpu_seconds[1:] or self.cpu_seconds)


def alternate(sides, epochs, after_warm_up=None):
    """Runs one warm-up epoch, then `epochs` timed epochs of every side, taking turns.

    Args:
        sides: list of `Side`.
        epochs: timed epochs per side (a side's own `epochs`, if set, caps it).
        after_warm_up: optional callable `(side)` run right after a side's warm-up epoch
            (e.g. to read the peak memory of that side alone).

    Returns:
        `sides`, with `seconds` and `cpu_seconds` filled (warm-up first).
    """
    for round_index in range(epochs + 1):
        for side in sides:
            if round_index > (side.epochs if side.epochs is not None else epochs):
                continue
            seconds, cpu_seconds = side.run_epoch()
            side.seconds.append(seconds)
            side.cpu_seconds.append(cpu_seconds)
            if round_index == 0 and after_warm_up is not None:
                after_warm_up(side)
    return sides


def ratio(numerator, denominator):
    """Throughput ratio of two sides (images/s of `numerator` over `denominator`).

    Returns a dict: `best` (fastest timed epochs), `cpu` (in process CPU time) and `paired`
    (median over rounds of the per-round ratio; load drift cancels within a round).
    """
    # strict=False: an option side may run fewer timed epochs than the baseline.
    pairs = list(zip(numerator.seconds[1:], denominator.seconds[1:], strict=False))
    return {
        "best": round(denominator.best_seconds() / numerator.best_seconds(), 3),
        "cpu": round(denominator.best_cpu_seconds() / numerator.best_cpu_seconds(), 3),
        "paired": round(statistics.median(d / n for n, d in pairs), 3) if pairs else None,
    }


def images_per_second(side, images_per_epoch):
    return round(images_per_epoch / side.best_seconds(), 2)


def peak_rss_mib():
    """Peak resident memory of this process so far, MiB (`getrusage`: KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def current_rss_mib():
    """Resident memory of this process now, MiB (from /proc; None elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def gpu_peak_mib(reset=False):
    """Peak memory TensorFlow allocated on GPU:0, MiB; None without a GPU."""
    if not tf.config.list_physical_devices("GPU"):
        return None
    if reset:
        tf.config.experimental.reset_memory_stats("GPU:0")
        return None
    return round(tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20, 1)


def load_average():
    """The 1-minute load average (None where the OS has none)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def best_seconds(function, repeats):
    """Calls `function` once to warm up (tracing), then `repeats` times; the fastest wall time."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)
