"""Tests for lungkit.experiment.runners: labels, precision and strategy, the training fingerprint."""

import json

import keras
import numpy as np

from lungkit import experiment, load_model
from lungkit.data.labels import balanced_labels
from lungkit.experiment import config, runners

TINY = dict(
    # 2 of 6 slices per class held out: precision/recall need more than k = 3 real images
    image_size=32, channels=1, phantom_per_class=6, test_fraction=0.34, n_generate=8,
    features="domain", classifier_steps=20, tstr_steps=10,
    **{"vae.epochs": 2, "vae.batch_size": 8, "vae.latent_dim": 8, "vae.widths": (8, 16),
       "denoiser.epochs": 2, "denoiser.batch_size": 8, "denoiser.widths": (8, 16),
       "diffusion.epochs": 2, "diffusion.batch_size": 8, "diffusion.widths": (8, 16),
       "diffusion.timesteps": 100, "diffusion.sampling_steps": 5,
       "diffusion.ddpm_timing_images": 2},
)


def test_balanced_labels_split_evenly_in_class_order():
    np.testing.assert_array_equal(balanced_labels(7), [0, 0, 0, 1, 1, 2, 2])
    assert np.bincount(balanced_labels(48)).tolist() == [16, 16, 16]


def test_runners_build_train_and_sample_under_the_configured_precision_and_strategy(tmp_path):
    from lungkit import training

    assert config.PRECISIONS == training.PRECISIONS
    assert set(config.COMPARE_STRATEGIES) == set(training.STRATEGIES) - {"multiworker"}
    settings = experiment.get_config("quick", precision="mixed_bfloat16", strategy="cpu",
                                     conditional=True, **{**TINY, "n_generate": 3})
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
