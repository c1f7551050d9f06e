"""Tests for lungkit.experiment.runners: labels, precision and strategy, the training fingerprint."""

import json

import keras
import numpy as np

from lungkit import experiment, load_model
from lungkit.data.labels import balanced_labels
from lungkit.experiment import config, runners


def test_balanced_labels_split_evenly_in_class_order():
    np.testing.assert_array_equal(balanced_labels(7), [0, 0, 0, 1, 1, 2, 2])
    assert np.bincount(balanced_labels(48)).tolist() == [16, 16, 16]


def test_runners_build_train_and_sample_under_the_configured_precision_and_strategy(tmp_path,
                                                                                 tiny):
    from lungkit import training

    assert config.PRECISIONS == training.PRECISIONS
    assert set(config.COMPARE_STRATEGIES) == set(training.STRATEGIES) - {"multiworker"}
    settings = experiment.get_config("quick", precision="mixed_bfloat16", strategy="cpu",
                                     conditional=True, **{**tiny, "n_generate": 3})
    rng = np.random.default_rng(0)
    x, y = rng.random((12, 32, 32, 1)).astype("float32"), np.repeat([0, 1, 2], 4)
    for name, variants in (("vae", {"vae"}), ("diffusion", {"ddim", "dpm++", "ddpm"})):
        _, samples = runners.train_and_sample(name, settings, x, y, tmp_path / name, progress=False)
        assert set(samples) == variants
        for images in samples.values():
            assert images.dtype == np.float32 and np.isfinite(images).all()
            assert images.min() >= 0.0 and images.max() <= 1.0
        saved = load_model(tmp_path / name / f"{name}.keras")
        assert saved.dtype_policy.name == "mixed_bfloat16"
        record = json.loads((tmp_path / name / f"{name}.run.json").read_text())
        assert record["finished"] and "mixed_bfloat16" in json.dumps(record["settings"])
    assert keras.config.dtype_policy().name == "float32"  # later models are unaffected
