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


class _Sampler:
    """A fake `generate` that records its calls; run k returns images filled with k."""

    def __init__(self):
        self.calls = []

    def __call__(self, n, **options):
        self.calls.append((n, options.get("steps")))
        return np.full((n, 2, 2, 1), len(self.calls), "float32")


def test_timed_generate_warms_up_at_the_timed_shape_and_times_every_repeat():
    settings = experiment.get_config("quick", timing_images=3, timing_repeats=3)
    generate = _Sampler()
    images, timing = runners.timed_generate(generate, 5, settings, steps=7)
    assert generate.calls == [(5, 7), (3, 7), (3, 7), (3, 7), (3, 7)]  # samples, warm-up, 3 runs
    assert images.shape == (5, 2, 2, 1) and (images == 1).all()
    assert len(timing["speed_runs"]) == 3 and timing["timed_images"] == 3


def test_a_cheap_warm_up_lets_the_timed_run_supply_the_images():
    settings = experiment.get_config("quick", timing_images=8)
    generate, warmed = _Sampler(), []
    images, timing = runners.timed_generate(generate, 1, settings, repeats=1, steps=1000,
                                            warmup=lambda n, **o: warmed.append(n))
    assert warmed == [1] and generate.calls == [(1, 1000)]  # one chain, timed, kept
    assert (images == 1).all() and len(timing["speed_runs"]) == 1


def test_ddpm_warm_up_traces_every_graph_the_ancestral_chain_runs():
    from lungkit.models.diffusion import DiffusionModel

    model = DiffusionModel(image_size=8, channels=1, widths=(8, 8), blocks_per_level=1,
                           timesteps=20, attention_levels=(), seed=0)
    options = {"steps": 20, "sampler": "ddpm", "seed": 0, "progress": False}
    runners.ddpm_warmup(model)(2, **options)
    traced = model._compiled_step.experimental_get_tracing_count()
    assert traced == 2  # the noisy step and the final noise-free one
    model.generate(2, **options)
    assert model._compiled_step.experimental_get_tracing_count() == traced
