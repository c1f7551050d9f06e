"""Tests for lungkit.training.runs: what a run's settings cover and what plan_run decides."""

import keras
import numpy as np
import pytest

from lungkit.data.pipeline import make_dataset
from lungkit.models.vae import VAE
from lungkit.training.runs import (
    RunRecord,
    differences,
    load_backup,
    plan_run,
    run_settings,
    save_backup,
)

IMAGES = np.random.default_rng(0).uniform(size=(6, 32, 32, 1)).astype("float32")
LABELS = np.array([0, 1, 2, 0, 1, 2])


def _settings(images=IMAGES, lr=1e-3, seed=0, batch=2, **vae):
    model = VAE(image_size=32, channels=1, latent_dim=4, widths=(8, 16),
                **{"seed": 0, **vae})
    model.compile(optimizer=keras.optimizers.Adam(lr))
    data = make_dataset(images, LABELS, batch_size=batch, image_size=32, channels=1, seed=seed)
    return run_settings(model, batch, data.fingerprint)


def test_settings_cover_model_optimizer_batch_and_data():
    base = _settings()
    assert base == _settings()  # the same run twice: the same settings
    for changed, key in [(_settings(beta=0.5), "config.beta"),
                         (_settings(lr=1e-4), "optimizer.learning_rate"),
                         (_settings(seed=1), "data"), (_settings(batch=3), "batch_size"),
                         (_settings(images=IMAGES * 0.5), "data"),
                         (_settings(num_classes=3), "config.num_classes")]:
        assert any(line.startswith(key) for line in differences(base, changed)), key
    policy = keras.config.dtype_policy().name
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        assert any("dtype" in line for line in differences(base, _settings()))
    finally:
        keras.mixed_precision.set_global_policy(policy)


def test_plan_run_decides_from_the_record(tmp_path):
    record, settings = RunRecord(tmp_path, "vae"), {"a": 1}
    assert plan_run(record, settings, 5) == ("fresh", 0)
    record.write(settings, 5, 2, finished=False)
    assert plan_run(record, settings, 5) == ("resume", 2)
    record.write(settings, 5, 5, finished=True)
    assert plan_run(record, settings, 5) == ("load", 5)
    assert plan_run(record, settings, 3) == ("load", 5)
    with pytest.raises(ValueError, match="no backup at epoch 5 to continue from"):
        plan_run(record, settings, 8)
    with pytest.raises(ValueError, match=r"other settings: a: 1 -> 2\. Nothing was changed"):
        plan_run(record, {"a": 2}, 5)
    with pytest.raises(ValueError, match="`retrain` must be one of"):
        plan_run(record, settings, 5, retrain="yes")
    (tmp_path / "history.csv").write_text("epoch\n0\n")
    assert plan_run(record, {"a": 2}, 5, retrain="if_changed") == ("fresh", 0)
    aside = next(tmp_path.glob("replaced-*"))
    assert sorted(p.name for p in aside.iterdir()) == ["history.csv", "vae.run.json"]
    assert plan_run(record, settings, 5) == ("fresh", 0)  # nothing left: a new run


def test_a_corrupt_record_is_named(tmp_path):
    (tmp_path / "vae.run.json").write_text("")
    with pytest.raises(ValueError, match=r"run record .*vae.run.json is corrupt \(it is empty\)"):
        plan_run(RunRecord(tmp_path, "vae"), {}, 1)


def test_a_corrupt_backup_weights_file_is_named(tmp_path):

    model = VAE(image_size=32, channels=1, latent_dim=4, widths=(8, 16), seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.optimizer.build(model.trainable_variables)
    save_backup(model, tmp_path, epoch=3)
    assert load_backup(model, tmp_path) == 3
    weights = tmp_path / "epoch-3.weights.h5"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated by a crash or a full disk
    with pytest.raises(ValueError, match="epoch-3.weights.h5 cannot be read.*corrupt"):
        load_backup(model, tmp_path)
