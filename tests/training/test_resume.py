"""Resume with shuffled data: the `make_dataset` order is a pure function of (seed, epoch),
`lungkit.training.fit` pins it every epoch, and a run SIGKILLed after epoch 2 and started
again ends with the history, weights and RNG states of an uninterrupted run.

The subprocess tests run this file's `_worker` entry (as tests/training/test_loop.py does).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from test_loop import ROOT, _finish, _flat_weights, _Interrupt, build, tiny_images

from lungkit import training
from lungkit.data.pipeline import make_dataset, set_shuffle_epoch
from lungkit.training.runs import _seed_generators, read_history

COUNT, SIZE = 12, 32  # images of the pipeline tests: pixel value 10 * index


def _images(count=COUNT, size=8):
    values = (np.arange(count, dtype=np.uint8) * 10)[:, None, None, None]
    return np.broadcast_to(values, (count, size, size, 3)).copy(), np.arange(count) % 3


def _order(dataset, passes=None):
    """Image indices in iteration order (checking each label belongs to its image)."""
    order = []
    for images, labels in dataset if passes is None else dataset.take(passes):
        indices = np.round(images.numpy()[:, 0, 0, 0] * 25.5).astype(int).tolist()
        assert (np.array(indices) % 3 == labels.numpy()).all()
        order += indices
    return order


@pytest.fixture
def sources(tmp_path):
    """`make_dataset` keyword sets for the arrays path and the files path (plain, cached)."""
    images, labels = _images()
    files = []
    for i, image in enumerate(images):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(files[-1])
    (tmp_path / "cache").mkdir()
    return {"arrays": dict(images=images, labels=labels),
            "files": dict(files=files, labels=labels),
            "memory_cache": dict(files=files, labels=labels, cache="memory"),
            "disk_cache": dict(files=files, labels=labels, cache=tmp_path / "cache")}


@pytest.mark.parametrize("source", ["arrays", "files", "memory_cache", "disk_cache"])
def test_pass_order_depends_on_seed_and_epoch_only(sources, source):
    def dataset(seed=7):
        return make_dataset(**sources[source], batch_size=5, image_size=8, seed=seed,
                            with_labels=True)

    advancing = dataset()
    passes = [_order(advancing) for _ in range(3)]  # a plain loop: epochs 0, 1, 2
    assert all(sorted(p) == list(range(COUNT)) for p in passes)
    assert len({tuple(p) for p in passes}) == 3 and passes[0] != list(range(COUNT))
    assert advancing.epoch_variable.numpy() == 3
    resumed = dataset()  # a new process resuming at epoch 2
    assert set_shuffle_epoch(resumed, 2)
    assert _order(resumed) == _order(resumed) == passes[2]  # pinned: extra passes repeat
    # every path draws the same permutation: the arrays path's
    reference = make_dataset(*_images(), batch_size=5, image_size=8, seed=7, with_labels=True)
    assert passes[0] == _order(reference)
    assert _order(dataset(seed=8)) != passes[0]


def test_cache_decodes_once_and_keeps_shuffling(sources, tmp_path):
    dataset = make_dataset(**sources["memory_cache"], batch_size=4, image_size=8,
                           with_labels=True)
    first = _order(dataset)
    for path in sources["files"]["files"]:
        path.unlink()  # a second decode would now find no files
    second = _order(dataset)
    assert sorted(second) == list(range(COUNT)) and second != first


def test_callers_epoch_variable_is_only_read_and_repeat_counts_passes():
    images, labels = _images()
    epoch = tf.Variable(0)  # int32, owned by the caller
    dataset = make_dataset(images, labels, batch_size=4, image_size=8, seed=1,
                           with_labels=True, epoch_variable=epoch)
    assert dataset.epoch_variable is epoch and dataset.cardinality().numpy() == 3
    first = _order(dataset)
    assert _order(dataset) == first and epoch.numpy() == 0
    epoch.assign(1)
    second = _order(dataset)
    assert second != first
    endless = make_dataset(images, labels, batch_size=4, image_size=8, seed=1,
                           with_labels=True, repeat=True)
    assert endless.cardinality().numpy() == tf.data.INFINITE_CARDINALITY
    assert _order(endless, passes=6) == first + second  # passes 0 and 1 in one iterator
    with pytest.raises(TypeError, match="`epoch_variable` must be a scalar integer"):
        make_dataset(images, epoch_variable=tf.Variable(0.0))
    with pytest.raises(TypeError, match="`seed` must be an int or None"):
        make_dataset(images, seed="1")


# --- resume in-process (an interrupt) and in a new process (SIGKILL) -------------------------
def _ct_images(n=8, size=SIZE):
    """Smooth, distinct grey images in [0, 1] (a shifted disc each)."""
    yy, xx = np.mgrid[:size, :size]
    discs = np.array([((yy - 14 - i % 4) ** 2 + (xx - 10 - 2 * i) ** 2) < 40
                      for i in range(n)], dtype="float32")
    return (0.1 + 0.05 * np.arange(n, dtype="float32")[:, None, None] + 0.5 * discs)[..., None]


def _build(kind):
    keras.utils.set_random_seed(0)
    if kind == "vae":
        from lungkit.models.vae import VAE
        model = VAE(image_size=SIZE, channels=1, latent_dim=4, widths=(8,), dense_units=0,
                    seed=1, name="vae")
    elif kind == "denoiser":
        from lungkit.models.denoiser import UNetDenoiser
        model = UNetDenoiser(image_size=SIZE, channels=1, widths=(8, 16), blocks_per_level=1,
                             groups=4, seed=1, name="denoiser")
    else:
        from lungkit.models.diffusion import DiffusionModel
        model = DiffusionModel(image_size=SIZE, channels=1, timesteps=50, widths=(8,),
                               blocks_per_level=1, num_classes=3, class_dropout=0.3,
                               ema_decay=0.9, seed=1, name="diffusion")
    model.compile(keras.optimizers.Adam(3e-3))
    return model


def _dataset(kind, source=None):
    """8 images, batches of 2, shuffled; the denoiser streams PNG files through a cache."""
    images = _ct_images()
    labels = np.arange(len(images)) % 3
    options = dict(batch_size=2, image_size=SIZE, channels=1, seed=3, with_labels=True)
    if source is None:
        return make_dataset(images, labels, **options)
    files = [Path(source) / f"{i}.png" for i in range(len(images))]
    for path, image in zip(files, images, strict=True):
        if not path.exists():
            Image.fromarray(np.round(image[..., 0] * 255).astype(np.uint8)).save(path)
    return make_dataset(files=files, labels=labels, cache="memory", **options)


def _state(model):
    return {"weights": _flat_weights(model),
            "rng": [np.asarray(g.state).tolist() for g in _seed_generators(model)],
            "iterations": int(model.optimizer.iterations.numpy())}


def _assert_same_run(history, expected, state, expected_state, keys):
    assert history["epoch"] == [0, 1, 2, 3]
    for key in keys:
        np.testing.assert_allclose(history[key], expected[key], rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(state["weights"], expected_state["weights"], rtol=1e-5,
                               atol=1e-6)
    assert state["rng"] == expected_state["rng"]
    assert state["iterations"] == expected_state["iterations"]


@pytest.mark.parametrize("cache", [None, "memory"])
def test_streamed_and_in_memory_data_train_the_same_run(tmp_path, cache):
    """Same pixels, same order, same number of steps: the same losses and weights. (The
    streamed path once logged 3/4 of the in-memory loss over 12 steps instead of 9: an
    unknown dataset length.)"""
    images = np.round(_ct_images() * 255).astype(np.uint8)
    labels = np.arange(len(images)) % 3
    files = []
    for i, image in enumerate(images):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(image[..., 0]).save(files[-1])
    options = dict(batch_size=3, image_size=SIZE, channels=1, seed=3, with_labels=True)
    sources = {"memory": make_dataset(images, labels, **options),
               "streamed": make_dataset(files=files, labels=labels, cache=cache, **options)}
    runs = {}
    for source, dataset in sources.items():
        model = _build("vae")
        history = training.fit(model, dataset, epochs=2, out_dir=tmp_path / source, verbose=0,
                               tensorboard=False, save_seconds=0)
        runs[source] = history, _state(model)
    (memory, memory_state), (streamed, streamed_state) = runs["memory"], runs["streamed"]
    assert memory_state["iterations"] == streamed_state["iterations"] == 2 * 3  # 8 images / 3
    for key in ("loss", "reconstruction_loss", "kl_loss"):
        np.testing.assert_allclose(streamed[key], memory[key], rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(streamed_state["weights"], memory_state["weights"], rtol=1e-5,
                               atol=1e-6)


def test_interrupted_diffusion_with_shuffled_labels_and_validation_resumes_exactly(tmp_path):
    def run(out_dir, callbacks=()):
        model = _build("diffusion")
        valid = make_dataset(_ct_images(4), np.arange(4) % 3, batch_size=2, image_size=SIZE,
                             channels=1, seed=5, with_labels=True)  # fresh, as in a new process
        history = training.fit(model, _dataset("diffusion"), 4, out_dir, verbose=0,
                               validation_data=valid, callbacks=list(callbacks),
                               tensorboard=False, save_seconds=0)
        return history, _state(model)

    expected, expected_state = run(tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "run", [_Interrupt(2)])
    history, state = run(tmp_path / "run")  # EMA weights are in the flat weights
    _assert_same_run(history, expected, state, expected_state, ["loss", "val_loss"])


def test_interrupted_custom_loop_restores_rng_and_shuffle_epoch(tmp_path, monkeypatch):
    """`distributed_fit` (the multi-worker loop) on one device: a crash in epoch 2."""
    strategy = training.get_strategy("cpu")

    def run(out_dir):
        with strategy.scope():
            model = build(noise_std=0.3, optimizer=keras.optimizers.Adam(1e-2))
        dataset = make_dataset(tiny_images(8), batch_size=2, image_size=8, seed=4)
        history = training.distributed_fit(model, dataset, 4, strategy, out_dir, verbose=False)
        return history, _state(model)

    expected, expected_state = run(tmp_path / "ref")
    save_epoch = training.loop._save_epoch

    def crash_in_epoch_2(model, out_dir, name, history, chief):
        if history["epoch"][-1] == 2:
            raise KeyboardInterrupt("simulated crash")
        save_epoch(model, out_dir, name, history, chief)

    monkeypatch.setattr(training.loop, "_save_epoch", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "run")
    monkeypatch.setattr(training.loop, "_save_epoch", save_epoch)
    history, state = run(tmp_path / "run")
    _assert_same_run(history, expected, state, expected_state, ["loss"])


def _spawn(*args):
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT),
                   "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *map(str, args)],
                            env=environment, cwd=str(ROOT), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _kill_at_marker(process, marker, timeout=120):
    deadline = time.time() + timeout
    while not marker.exists():
        assert process.poll() is None and time.time() < deadline, process.stdout.read()[-3000:]
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def test_sigkilled_shuffled_runs_resume_like_uninterrupted_ones(tmp_path):
    kinds = ("vae", "denoiser")
    reference = _spawn(tmp_path / "ref", "-", *kinds)
    killed = {kind: _spawn(tmp_path / "run", tmp_path / f"{kind}.marker", kind) for kind in kinds}
    for kind, process in killed.items():
        _kill_at_marker(process, tmp_path / f"{kind}.marker")
        assert read_history(tmp_path / "run" / kind / "history.csv")["epoch"] == [0, 1]
    _finish(_spawn(tmp_path / "run", "-", *kinds), timeout=180)
    _finish(reference, timeout=180)
    for kind in kinds:
        resumed = json.loads((tmp_path / "run" / kind / "result.json").read_text())
        expected = json.loads((tmp_path / "ref" / kind / "result.json").read_text())
        assert resumed["epochs_run"] == [2, 3] and expected["epochs_run"] == [0, 1, 2, 3]
        assert resumed["pass_orders_differ"]  # the data order really changes every epoch
        _assert_same_run(read_history(tmp_path / "run" / kind / "history.csv"),
                         expected["history"], resumed["state"], expected["state"],
                         resumed["loss_names"])
        assert (tmp_path / "run" / kind / "backup" / "state.json").is_file()  # kept


# --- subprocess entry point ------------------------------------------------------------------
def _worker(out_root, marker, *kinds):
    """Trains each model 4 epochs in `out_root/<kind>`; with a marker path, writes it after
    the first batch of epoch 2 (epochs 0 and 1 are backed up) and hangs, to be killed."""

    class Hang(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 2:
                Path(marker).write_text("epoch 2 batch 0 done")
                time.sleep(600)

    class Record(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs = []

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append(epoch)

    for kind in kinds:
        out_dir = Path(out_root) / kind
        out_dir.mkdir(parents=True, exist_ok=True)
        dataset = _dataset(kind, out_dir.parent if kind == "denoiser" else None)
        model, record = _build(kind), Record()
        callbacks = [record] + ([Hang()] if marker != "-" else [])
        history = training.fit(model, dataset, 4, out_dir, callbacks=callbacks, verbose=0,
                               tensorboard=False, save_seconds=0)
        orders = []
        for epoch in (0, 1):
            set_shuffle_epoch(dataset, epoch)
            orders.append([np.mean(images.numpy(), axis=(1, 2, 3)).round(4).tolist()
                           for images, _ in dataset])
        (out_dir / "result.json").write_text(json.dumps({
            "epochs_run": record.epochs, "history": dict(history), "state": _state(model),
            "loss_names": list(model.loss_names), "pass_orders_differ": orders[0] != orders[1]}))


if __name__ == "__main__":
    _worker(*sys.argv[1:])
