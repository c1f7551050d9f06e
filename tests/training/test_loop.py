"""Tests for lungkit.training (loop, strategy, callbacks): strategies, precision, callbacks, resume
after SIGKILL, mirrored and multi-worker training.

A tiny autoencoder defined here stands in for the real models. Tests that need a fresh
TensorFlow (logical CPU devices, TF_CONFIG) run this file's `_worker` entry in subprocesses.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from lungkit import training
from lungkit.models.base import GenerativeModel, ReplicaSeeds
from lungkit.training import callbacks
from lungkit.training.callbacks import TimingCallback
from lungkit.training.runs import read_history

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@keras.saving.register_keras_serializable(package="lungkit_tests")
class TinyAutoencoder(GenerativeModel):
    """Two convolutions reconstructing their (optionally noised) input, MSE loss."""

    loss_names = ("loss", "mse")

    def __init__(self, noise_std=0.0, **kwargs):
        super().__init__(**kwargs)
        self.noise_std = noise_std
        self.encoder = keras.layers.Conv2D(4, 3, padding="same", activation="relu")
        self.decoder = keras.layers.Conv2D(3, 3, padding="same", dtype="float32")
        self.noise = keras.random.SeedGenerator(1)
        self.replica = None  # a replica id to draw as, for a one-device reference


    def call(self, images, training=False):
        return self.decoder(self.encoder(images))

    def compute_losses(self, images, labels=None, training=False):
        noisy = images
        if self.noise_std:
            seed = ReplicaSeeds(self.noise, self.replica)
            noisy = images + self.noise_std * keras.random.normal(keras.ops.shape(images),
                                                                  seed=seed)
        error = keras.ops.cast(self(noisy, training=training), "float32") - images
        mse = keras.ops.mean(error**2)
        return mse, mse

    def get_config(self):
        return {**super().get_config(), "noise_std": self.noise_std}


def tiny_images(n=8, size=8):
    return np.random.RandomState(0).rand(n, size, size, 3).astype("float32")


def tiny_dataset(n=8, batch_size=4):
    return tf.data.Dataset.from_tensor_slices(tiny_images(n)).batch(batch_size)


def build(noise_std=0.0, optimizer=None):
    keras.utils.set_random_seed(0)
    model = TinyAutoencoder(noise_std=noise_std, name="tiny")
    model.compile(optimizer or keras.optimizers.SGD(0.1))
    return model


@pytest.mark.parametrize("precision, jit", [("float32", False), ("mixed_float16", False),
                                            ("mixed_bfloat16", False), ("float32", True)])
def test_each_precision_and_jit_trains_without_nan(precision, jit, tmp_path):
    model, history = training.train(
        lambda: TinyAutoencoder(name="tiny"), tiny_dataset(), epochs=1, out_dir=tmp_path,
        strategy="cpu", precision=precision, jit=jit, learning_rate=1e-2, verbose=0)
    assert keras.config.dtype_policy().name == "float32"  # restored for later models
    assert model.encoder.compute_dtype == {"mixed_float16": "float16",
                                           "mixed_bfloat16": "bfloat16"}.get(precision, "float32")
    assert model.decoder.compute_dtype == "float32"  # the last layer stays float32
    if precision == "mixed_float16":  # Keras' compile() added loss scaling
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert history["epoch"] == [0] and np.isfinite(history["loss"][0])
    assert model.optimizer.iterations.numpy() == 2


def test_train_builds_global_batch_from_callable(tmp_path):
    seen = []

    def dataset(global_batch):
        seen.append(global_batch)
        return tiny_dataset(batch_size=global_batch)

    _, history = training.train(lambda: TinyAutoencoder(name="tiny"), dataset, epochs=1,
                                out_dir=tmp_path, strategy="cpu", batch_size=2, verbose=0)
    assert seen == [2] and history["images_per_second"][0] > 0
    with pytest.raises(ValueError, match="`batch_size` is required"):
        training.train(TinyAutoencoder, dataset, epochs=1, out_dir=tmp_path)


# --- callbacks ------------------------------------------------------------------------------------
def test_timing_callback_records_seconds_and_images_per_second(tmp_path):
    model, timing = build(), TimingCallback(batch_size=4)
    exact = TimingCallback(images_per_epoch=7)
    history = training.fit(model, tiny_dataset(), 3, tmp_path, callbacks=[timing, exact],
                           verbose=0, save_seconds=0)
    assert len(timing.seconds_per_epoch) == 3 and min(timing.seconds_per_epoch) > 0
    assert timing.first_epoch_seconds == timing.seconds_per_epoch[0]
    np.testing.assert_allclose(timing.images_per_second,
                               [8 / s for s in timing.seconds_per_epoch], rtol=1e-6)
    np.testing.assert_allclose(exact.images_per_second,
                               [7 / s for s in exact.seconds_per_epoch], rtol=1e-6)
    summary = timing.summary()
    assert summary["seconds_per_epoch"] == pytest.approx(np.mean(timing.seconds_per_epoch[1:]))
    # lungkit's own timing callback wrote into the logs, so the CSV holds both columns
    assert len(history["epoch_seconds"]) == 3 and all(r > 0 for r in history["images_per_second"])


def test_nan_loss_stops_with_advice_and_keeps_the_last_good_model(tmp_path, caplog):
    images = tiny_images()
    good = build()
    training.fit(good, tiny_dataset(), 1, tmp_path, verbose=0, save_seconds=0)
    saved = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "logs" not in
             p.parts and p.suffix != ".json" and p.name != "history.csv"}
    images[0, 0, 0, 0] = np.nan
    model = build()
    with caplog.at_level("ERROR", logger="lungkit.training.callbacks"), \
            pytest.raises(training.TrainingDiverged, match="after epoch 1, are in .*tiny.keras"):
        training.fit(model, tf.data.Dataset.from_tensor_slices(images).batch(4), 5, tmp_path,
                     verbose=0, retrain=False, save_seconds=0)
    assert model.optimizer.iterations.numpy() == 3  # restored 2, stopped after one more batch
    message = caplog.text
    assert "became nan at epoch 1, batch 0" in message
    assert "lower the learning rate (now 0.1" in message and "[0, 1]" in message
    for path, data in saved.items():  # nothing diverged was written over the good files
        assert path.read_bytes() == data, path
    reloaded = keras.saving.load_model(tmp_path / "tiny.keras")
    assert all(np.isfinite(w).all() for w in reloaded.get_weights())


def test_checkpoints_history_and_backup_cleanup(tmp_path):
    model = build()
    history = training.fit(model, tiny_dataset(), 2, tmp_path, verbose=0,
                           validation_data=tiny_dataset(), save_seconds=0)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "logs") == [
        "backup", "history.csv", "tiny.best.keras", "tiny.keras", "tiny.run.json"]
    assert history["epoch"] == [0, 1] and history["loss"][1] < history["loss"][0]
    assert history["val_loss"][1] < history["val_loss"][0]  # the best checkpoint's monitor
    reloaded = keras.saving.load_model(tmp_path / "tiny.keras")
    for a, b in zip(reloaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert reloaded.optimizer.iterations.numpy() == 4


def _checkpoint_run(out_dir, losses, save_seconds, seconds_per_epoch=1.0, diverge_at=None,
                    monkeypatch=None):
    """Drives a `Checkpoint` by hand: epoch `e` ends with every weight equal to `e` and loss
    `losses[e]`, on a clock that advances `seconds_per_epoch` per epoch."""
    model = build()
    model.fit(tiny_dataset(), epochs=1, verbose=0, shuffle=False)  # builds the optimizer
    clock = [0.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: clock[0])
    guard = training.FriendlyTerminateOnNaN()
    checkpoint = callbacks.Checkpoint(out_dir, "tiny", save_seconds=save_seconds, guard=guard)
    guard.set_model(model)
    checkpoint.set_model(model)
    checkpoint.set_params({"epochs": len(losses)})
    checkpoint.on_train_begin()
    for epoch, loss in enumerate(losses):
        model.set_weights([np.full_like(w, epoch) for w in model.get_weights()])
        clock[0] += seconds_per_epoch
        if epoch == diverge_at:
            guard.on_train_batch_end(0, {"loss": float("nan")})
            break
        checkpoint.on_epoch_end(epoch, {"loss": loss})
    checkpoint.on_train_end()
    return checkpoint


def _weights_value(path):
    values = {float(w.flat[0]) for w in keras.saving.load_model(path).get_weights() if w.size}
    assert len(values) == 1, values
    return values.pop()


@pytest.mark.parametrize("save_seconds, saved", [(0, [1, 2, 3, 4]), (2.5, [3, 4]), (60, [4])])
def test_checkpoints_wait_save_seconds_and_keep_the_best_epoch_exactly(save_seconds, saved,
                                                                     tmp_path, monkeypatch):
    checkpoint = _checkpoint_run(tmp_path, [3.0, 1.0, 2.0, 4.0], save_seconds,
                                 monkeypatch=monkeypatch)
    assert checkpoint.saved_epochs == saved
    assert _weights_value(tmp_path / "tiny.best.keras") == 1.0  # epoch 1, the lowest loss
    assert _weights_value(tmp_path / "tiny.keras") == 3.0
    assert training.backup_epoch(tmp_path / "backup") == 4


def test_a_diverged_run_writes_its_pending_best_model_and_no_backup(tmp_path, monkeypatch):
    checkpoint = _checkpoint_run(tmp_path, [3.0, 1.0, 2.0, 4.0], 60, diverge_at=2,
                                 monkeypatch=monkeypatch)
    assert checkpoint.saved_epochs == []
    assert _weights_value(tmp_path / "tiny.best.keras") == 1.0
    assert not (tmp_path / "tiny.keras").exists()
    assert training.backup_epoch(tmp_path / "backup") is None


def test_the_default_checkpoint_interval_applies_and_is_checked(tmp_path):
    history = training.fit(build(), tiny_dataset(), 3, tmp_path, verbose=0)  # under a second
    assert history["epoch"] == [0, 1, 2]
    assert training.backup_epoch(tmp_path / "backup") == 3
    with pytest.raises(ValueError, match="save_seconds"):
        training.fit(build(), tiny_dataset(), 3, tmp_path / "bad", verbose=0, save_seconds=-1)


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, at=2):
        super().__init__()
        self.at = at

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at:
            raise KeyboardInterrupt("simulated crash")


@pytest.mark.parametrize("save_every, crash_at", [(1, 2), (2, 3)])
def test_resume_after_interruption_matches_uninterrupted_run(save_every, crash_at, tmp_path):
    reference = build(noise_std=0.3)
    expected = training.fit(reference, tiny_dataset(), 4, tmp_path / "ref", verbose=0,
                            save_seconds=0)
    with pytest.raises(KeyboardInterrupt):
        training.fit(build(noise_std=0.3), tiny_dataset(), 4, tmp_path / "run",
                     callbacks=[_Interrupt(crash_at)], verbose=0, save_every=save_every,
                     save_seconds=0)
    assert len(read_history(tmp_path / "run" / "history.csv")["epoch"]) == crash_at
    resumed = build(noise_std=0.3)  # a fresh process would start from fresh weights
    history = training.fit(resumed, tiny_dataset(), 4, tmp_path / "run", verbose=0,
                           save_every=save_every, save_seconds=0)
    # with save_every=2 the backup is from epoch 2: epoch 2 is trained again, its row replaced
    assert history["epoch"] == [0, 1, 2, 3]
    np.testing.assert_allclose(history["loss"], expected["loss"], rtol=1e-5)
    # weights, optimizer and the noise generator's state all came back
    np.testing.assert_array_equal(resumed.noise.state.numpy(), reference.noise.state.numpy())
    for a, b in zip(resumed.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_vae_resume_restores_its_sampling_noise(tmp_path, tiny_ct_batch):
    vae_module = pytest.importorskip("lungkit.models.vae")

    def vae():
        keras.utils.set_random_seed(0)
        model = vae_module.VAE(image_size=32, channels=3, latent_dim=4, widths=(8,),
                               dense_units=0, seed=1)
        model.compile(keras.optimizers.Adam(1e-3))
        return model

    data = tf.data.Dataset.from_tensor_slices(tiny_ct_batch).batch(2)
    expected = training.fit(vae(), data, 3, tmp_path / "ref", verbose=0, save_seconds=0)
    with pytest.raises(KeyboardInterrupt):
        training.fit(vae(), data, 3, tmp_path / "run", callbacks=[_Interrupt()], verbose=0,
                     save_seconds=0)
    history = training.fit(vae(), data, 3, tmp_path / "run", verbose=0, save_seconds=0)
    assert history["epoch"] == [0, 1, 2]
    for key in ("loss", "reconstruction_loss", "kl_loss"):
        np.testing.assert_allclose(history[key], expected[key], rtol=1e-5)


def test_resume_drops_history_rows_that_will_be_redone(tmp_path):
    # A kill after the history row of epoch 2 but before its backup: epoch 2 is trained again.
    with pytest.raises(KeyboardInterrupt):
        training.fit(build(), tiny_dataset(), 3, tmp_path, callbacks=[_Interrupt(2)], verbose=0,
                     save_seconds=0)
    from lungkit.training.runs import write_history

    history = read_history(tmp_path / "history.csv")
    extra = {key: values + [values[-1]] for key, values in history.items()}
    extra["epoch"][-1] = 2
    write_history(tmp_path / "history.csv", extra)  # a row for epoch 2, without its backup
    resumed = training.fit(build(), tiny_dataset(), 3, tmp_path, verbose=0, save_seconds=0)
    assert resumed["epoch"] == [0, 1, 2] and resumed["loss"][:2] == history["loss"]
    assert resumed["loss"][2] != history["loss"][1]


def test_a_finished_run_is_loaded_continued_or_refused_never_retrained(tmp_path, caplog):
    first = build()
    history = training.fit(first, tiny_dataset(), 2, tmp_path, verbose=0, save_seconds=0)
    iterations = int(first.optimizer.iterations.numpy())
    model_bytes = (tmp_path / "tiny.keras").read_bytes()
    caplog.set_level("INFO", logger="lungkit.training")
    again = build()
    loaded = training.fit(again, tiny_dataset(), 2, tmp_path, verbose=0,
                          save_seconds=0)  # the next day
    assert loaded == history and "nothing to train" in caplog.text
    assert (tmp_path / "tiny.keras").read_bytes() == model_bytes
    for a, b in zip(again.get_weights(), first.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    more = build()
    longer = training.fit(more, tiny_dataset(), 3, tmp_path, verbose=0,
                          save_seconds=0)  # one epoch more
    assert longer["epoch"] == [0, 1, 2] and longer["loss"][:2] == history["loss"]
    assert int(more.optimizer.iterations.numpy()) == iterations + 2  # continued, not restarted
    with pytest.raises(ValueError, match=r"other settings: .*learning_rate: 0\.1 -> 0\.05.*"
                                         r"retrain=True"):
        training.fit(build(optimizer=keras.optimizers.SGD(0.05)), tiny_dataset(), 3, tmp_path,
                     verbose=0, save_seconds=0)
    fresh = training.fit(build(optimizer=keras.optimizers.SGD(0.05)), tiny_dataset(), 1,
                         tmp_path, verbose=0, retrain=True, save_seconds=0)
    assert fresh["epoch"] == [0]
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("replaced-")]
    assert len(aside) == 1 and (aside[0] / "tiny.keras").is_file()
    assert read_history(aside[0] / "history.csv")["epoch"] == [0, 1, 2]


def test_run_files_without_a_record_are_refused(tmp_path):
    (tmp_path / "tiny.keras").write_text("someone else's model")
    with pytest.raises(ValueError, match="holds tiny.keras but no tiny.run.json.*Nothing was "
                                         "changed"):
        training.fit(build(), tiny_dataset(), 1, tmp_path, verbose=0, save_seconds=0)
    assert (tmp_path / "tiny.keras").read_text() == "someone else's model"


def test_ctrl_c_says_what_is_saved_and_how_to_resume(tmp_path):
    with pytest.raises(training.TrainingInterrupted) as caught:
        training.fit(build(), tiny_dataset(), 4, tmp_path, callbacks=[_Interrupt(2)], verbose=0,
                     save_seconds=0)
    message = str(caught.value)
    assert "2 of 4 epochs finished and saved in" in message and "resume at epoch 3" in message
    assert caught.value._render_traceback_() == [message]  # IPython shows one line
    with pytest.raises(training.TrainingInterrupted, match="nothing was saved"):
        training.fit(build(), tiny_dataset(), 4, tmp_path / "early", callbacks=[_Interrupt(0)],
                     verbose=0, save_seconds=0)


def test_epochs_are_checked_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="`epochs` must be an integer >= 1. Received: epochs=-1"):
        training.fit(build(), tiny_dataset(), -1, tmp_path / "run", verbose=0)
    assert not (tmp_path / "run").exists()


# --- subprocess tests: SIGKILL resume, mirrored on two logical CPUs, multi-worker ----------------
def _python(*args, env=None):
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT),
                   "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *map(str, args)],
                            env=environment, cwd=str(ROOT), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(process, timeout=120):
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def _wait_for(marker, process, timeout=120):
    """Waits until `process` writes `marker` (failing with its output if it ends first)."""
    deadline = time.time() + timeout
    while not marker.exists():
        assert process.poll() is None and time.time() < deadline, process.stdout.read()[-3000:]
        time.sleep(0.1)


def test_sigkill_during_epoch_2_then_restart_resumes_with_continuous_history(tmp_path):
    run, marker = tmp_path / "run", tmp_path / "marker"
    reference = _python("train", tmp_path / "ref", "-")
    killed = _python("train", run, marker)
    _wait_for(marker, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert read_history(run / "history.csv")["epoch"] == [0, 1]  # killed inside epoch 2
    _finish(_python("train", run, "-"))
    _finish(reference)
    resumed = json.loads((run / "result.json").read_text())
    expected = json.loads((tmp_path / "ref" / "result.json").read_text())
    assert resumed["epochs_run"] == [2, 3] and expected["epochs_run"] == [0, 1, 2, 3]
    history = read_history(run / "history.csv")
    assert history["epoch"] == [0, 1, 2, 3]
    np.testing.assert_allclose(history["loss"], expected["history"]["loss"], rtol=1e-5)
    np.testing.assert_allclose(resumed["weights"], expected["weights"], rtol=1e-5, atol=1e-6)
    assert (run / "backup" / "state.json").is_file()  # kept: the run can be continued


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one_and_resumes(tmp_path):
    run, marker = tmp_path / "run", tmp_path / "marker"
    reference = _python("train", tmp_path / "ref", "-")
    killed = _python("train_hang_in_save", run, marker)
    _wait_for(marker, killed)
    before = (run / "tiny.keras").read_bytes()
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    # the half-written file is a temporary; the epoch-1 model is whole and loads
    partial = [p for p in run.iterdir() if p.name.startswith(".tiny.keras.")]
    assert len(partial) == 1 and partial[0].read_bytes().startswith(b"PK\x03\x04 half")
    assert (run / "tiny.keras").read_bytes() == before
    assert keras.models.load_model(run / "tiny.keras").count_params() > 0
    output = _finish(_python("train", run, "-"))
    _finish(reference)
    assert not [p for p in run.iterdir() if p.name.startswith(".tiny.")], output[-2000:]
    resumed = json.loads((run / "result.json").read_text())
    expected = json.loads((tmp_path / "ref" / "result.json").read_text())
    assert resumed["epochs_run"] == [2, 3]  # the backup of epoch 2 was never written
    assert read_history(run / "history.csv")["epoch"] == [0, 1, 2, 3]
    np.testing.assert_allclose(resumed["weights"], expected["weights"], rtol=1e-5, atol=1e-6)


def test_mirrored_two_logical_cpus_matches_one_device(tmp_path):
    output = _finish(_python("mirrored", tmp_path))
    result = json.loads((tmp_path / "mirrored.json").read_text())
    assert result["replicas"] == 2, output
    assert result["fit_loss"] == pytest.approx(result["single_loss"], rel=1e-5)
    for key in ("fit_weights", "loop_weights"):
        np.testing.assert_allclose(result[key], result["single_weights"], rtol=1e-4, atol=1e-6)
    # with noise: each replica draws its own, and one device drawing the same (each half of
    # the batch with its replica's seed) trains to the same weights
    np.testing.assert_allclose(result["noisy_weights"], result["equal_draws_weights"],
                               rtol=1e-4, atol=1e-6)
    assert not np.allclose(result["noisy_weights"], result["shared_draws_weights"],
                           rtol=1e-4, atol=1e-6)  # the reference can tell the draws apart
    # jit under two replicas: refused before the model is built or any data are read
    for key in ("train", "fit", "cli"):
        assert "cannot run under MirroredStrategy with 2 replicas" in result["jit"][key], key
    assert result["jit"]["built"] == 0 and result["jit"]["data_read"] == 0
    assert result["jit"]["written"] == []


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multiworker_two_processes_same_weights_chief_alone_writes(tmp_path):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = [
        _python("multiworker", tmp_path / f"worker{i}",
                env={"TF_CONFIG": json.dumps({"cluster": {"worker": workers},
                                              "task": {"type": "worker", "index": i}})})
        for i in range(2)]
    outputs = [_finish(p, timeout=180) for p in processes]
    results = [json.loads((tmp_path / f"result{i}.json").read_text()) for i in range(2)]
    assert [r["replicas"] for r in results] == [2, 2], outputs
    np.testing.assert_array_equal(results[0]["weights"], results[1]["weights"])
    # one device, the same global batches: the same weights
    np.testing.assert_allclose(results[0]["weights"], results[0]["single_weights"],
                               rtol=1e-4, atol=1e-6)
    chief, other = tmp_path / "worker0", tmp_path / "worker1"
    assert sorted(p.name for p in chief.iterdir()) == ["backup", "history.csv", "tiny.keras"]
    assert read_history(chief / "history.csv")["epoch"] == [0, 1]
    assert sorted(p.name for p in other.iterdir()) == ["backup_worker1"]  # its own backup


# --- subprocess entry points --------------------------------------------------------------------
def _flat_weights(model):
    return np.concatenate([w.ravel() for w in model.get_weights()]).tolist()


def _worker_train(out_dir, marker):
    """Trains 4 epochs; with a marker path, writes it inside epoch 2 and hangs (to be killed)."""

    class Hang(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 2:
                Path(marker).write_text("epoch 2 batch 0 done")
                time.sleep(600)

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

    class Record(keras.callbacks.Callback):
        epochs = []

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append(epoch)

    model = build(noise_std=0.3, optimizer=keras.optimizers.Adam(1e-2))
    callbacks = [Record()] + ([Hang()] if marker != "-" else [])
    history = training.fit(model, tiny_dataset(), 4, out_dir, callbacks=callbacks, verbose=0,
                           save_seconds=0)
    Path(out_dir, "result.json").write_text(json.dumps({
        "epochs_run": Record.epochs, "history": dict(history), "weights": _flat_weights(model)}))


def _worker_train_hang_in_save(out_dir, marker):
    """Trains 4 epochs; the checkpoint after epoch 2 stops inside the write of the last
    model (half a file written to its temporary name), writes `marker` and hangs."""
    saves = []
    real_save = TinyAutoencoder.save

    def save(self, path, *args, **kwargs):
        saves.append(Path(path).name)
        if sum(name.startswith(".tiny.keras.") for name in saves) == 3 and Path(
                path).name.startswith(".tiny.keras."):
            Path(path).write_bytes(b"PK\x03\x04 half a zip")
            Path(marker).write_text("inside the epoch-2 checkpoint")
            time.sleep(600)
        return real_save(self, path, *args, **kwargs)

    TinyAutoencoder.save = save
    model = build(noise_std=0.3, optimizer=keras.optimizers.Adam(1e-2))
    training.fit(model, tiny_dataset(), 4, out_dir, verbose=0, save_seconds=0)


def _worker_mirrored(out_dir):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    single = build()
    initial = single.get_weights()
    single_loss = single.fit(tiny_dataset(4), verbose=0).history["loss"][0]
    strategy = training.get_strategy("mirrored")
    results = {"replicas": strategy.num_replicas_in_sync, "single_loss": single_loss,
               "single_weights": _flat_weights(single)}
    for mode in ("fit", "loop"):
        with strategy.scope():
            model = build()
            model.set_weights(initial)
        if mode == "fit":
            results["fit_loss"] = model.fit(tiny_dataset(4), verbose=0).history["loss"][0]
        else:
            training.distributed_fit(model, tiny_dataset(4), 1, strategy, Path(out_dir) / "loop")
        results[f"{mode}_weights"] = _flat_weights(model)
    start = build(noise_std=0.3)
    start(tiny_images(1))  # built: it has weights to copy
    initial = start.get_weights()
    with strategy.scope():
        noisy = build(noise_std=0.3)
        noisy(tiny_images(1))
        noisy.set_weights(initial)
    noisy.fit(tiny_dataset(8), epochs=2, verbose=0)
    results["noisy_weights"] = _flat_weights(noisy)
    for key, replicas in (("equal_draws_weights", (0, 1)), ("shared_draws_weights", (0, 0))):
        reference = build(noise_std=0.3)
        reference(tiny_images(1))
        reference.set_weights(initial)
        _train_with_draws_of(reference, tiny_dataset(8), 2, replicas)
        results[key] = _flat_weights(reference)
    results["jit"] = _jit_refusals(strategy, Path(out_dir))
    Path(out_dir, "mirrored.json").write_text(json.dumps(results))


def _train_with_draws_of(model, dataset, epochs, replicas):
    """One device: each step's loss is the mean over the batch's halves, half `i` drawing its
    noise as replica `replicas[i]` from the same generator state (what mirrored replicas do)."""
    model.optimizer.build(model.trainable_variables)
    for _ in range(epochs):
        for images in dataset:
            state = model.noise.state.numpy()
            with tf.GradientTape() as tape:
                losses = []
                for replica, half in zip(replicas, tf.split(images, len(replicas)), strict=True):
                    model.noise.state.assign(state)
                    model.replica = replica
                    losses.append(model.compute_losses(half, training=True)[0])
                loss = tf.add_n(losses) / len(losses)
            grads = tape.gradient(loss, model.trainable_variables)
            model.optimizer.apply(grads, model.trainable_variables)


def _jit_refusals(strategy, out_dir):
    """The messages of `train`, `fit` and `lungkit train` asked for XLA under two replicas."""
    import logging

    from lungkit import cli

    calls = {"built": 0, "data_read": 0}

    def build_model():
        calls["built"] += 1
        return TinyAutoencoder(name="tiny")

    def dataset(batch):
        calls["data_read"] += 1
        return tiny_dataset()

    messages = {}
    with pytest.raises(ValueError) as refused:
        training.train(build_model, dataset, epochs=1, out_dir=out_dir / "train",
                       strategy=strategy, jit=True, batch_size=2)
    messages["train"] = str(refused.value)
    with strategy.scope():
        model = TinyAutoencoder(name="tiny")
        model.compile(keras.optimizers.SGD(0.1), jit_compile=True)
    with pytest.raises(ValueError) as refused:
        training.fit(model, tiny_dataset(), 1, out_dir / "fit", verbose=0, save_seconds=0)
    messages["fit"] = str(refused.value)

    class Keep(logging.Handler):
        def emit(self, record):
            messages["cli"] = record.getMessage()

    logging.getLogger("lungkit").addHandler(Keep(logging.ERROR))
    code = cli.main(["train", "vae", "--jit", "--strategy", "mirrored",
                     "--out", str(out_dir / "cli"), "--data", str(out_dir / "cli-data")])
    messages["cli"] += f" (exit {code})"
    written = sorted(p.name for p in out_dir.iterdir() if p.name in
                     ("train", "fit", "cli", "cli-data"))
    return {**messages, **calls, "written": written}


def _worker_multiworker(out_dir):
    strategy = training.get_strategy("auto")  # TF_CONFIG with two workers -> multi-worker
    with strategy.scope():
        model = build()
    initial = model.get_weights()
    training.fit(model, tiny_dataset(), 2, out_dir)  # picks the custom loop by itself
    single = build()
    single.set_weights(initial)
    single.fit(tiny_dataset(), epochs=2, verbose=0)
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    Path(out_dir).parent.joinpath(f"result{index}.json").write_text(json.dumps({
        "replicas": strategy.num_replicas_in_sync, "weights": _flat_weights(model),
        "single_weights": _flat_weights(single)}))


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    {"train": _worker_train, "train_hang_in_save": _worker_train_hang_in_save,
     "mirrored": _worker_mirrored,
     "multiworker": _worker_multiworker}[command](*arguments)
