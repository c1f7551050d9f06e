"""Tests for lungkit.experiment.compare: the split, the artefacts of a tiny run, class fidelity,
and reuse of finished trainings."""

import json
import logging
import shutil

import keras
import numpy as np
import pytest

from lungkit import experiment, load_model
from lungkit.experiment.compare import feature_spaces


@pytest.fixture(scope="module")
def tiny_features(tmp_path_factory, tiny):
    """The tiny runs' feature spaces, the domain encoder trained once for this module.

    Its file name hashes the encoder split and the encoder's settings, which every tiny
    config shares, so `compare` loads it from `<run>/features` instead of training its own.
    """
    root = tmp_path_factory.mktemp("tiny_features")
    config = experiment.get_config("quick", **tiny)
    spaces = feature_spaces(config, experiment.load_split(config, root),
                                           root / "features")
    return root / "features", {space: e.name for space, e in spaces.items()}


def _run_folder(tmp_path, tiny_features):
    """`<tmp_path>/run`, holding the module's domain encoder in its feature cache."""
    run = tmp_path / "run"
    shutil.copytree(tiny_features[0], run / "features")
    return run


def test_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat([0, 1, 2], [10, 20, 30])
    train, test = experiment.split_indices(labels, 0.2, seed=3)
    assert not set(train) & set(test)
    assert len(train) + len(test) == len(labels)
    assert np.bincount(labels[test]).tolist() == [2, 4, 6]
    again = experiment.split_indices(labels, 0.2, seed=3)
    np.testing.assert_array_equal(test, again[1])
    assert not np.array_equal(test, experiment.split_indices(labels, 0.2, seed=4)[1])


def test_compare_writes_every_artefact(tmp_path, tiny_features, tiny):
    config = experiment.get_config("quick", name="tiny", **tiny)
    run = _run_folder(tmp_path, tiny_features)
    results = experiment.compare(config, run, progress=False)
    assert results["feature_extractors"] == tiny_features[1]  # encoder found in the cache
    assert set(tiny_features[1]) == {"random_cnn", "texture", "domain_encoder"}
    assert results["feature_extractor"] == tiny_features[1]["random_cnn"]  # the claims' space
    data = results["data"]
    assert (data["n_train"], data["n_test"], data["n_encoder"]) == (9, 6, 3)  # disjoint splits
    for name in ("report.md", "report.html", "metrics.json"):
        assert (run / name).stat().st_size > 0, name
    figures = {p.name for p in (run / "figures").glob("*.png")}
    assert {"fig1_real_per_class.png", "fig2_vae_samples.png", "fig3_diffusion_samples.png",
            "fig4_vae_curves.png", "fig5_denoiser_curves.png", "speed.png"} <= figures
    saved = json.loads((run / "metrics.json").read_text())
    assert set(saved["models"]) == {"vae", "denoiser", "diffusion"}
    assert saved["feature_extractor"] == results["feature_extractor"]
    for entry in saved["models"].values():
        assert entry["seconds_per_epoch"] > 0
        assert len(entry["history"]["loss"]) == 2
        for name, variant in entry["variants"].items():
            assert variant["images_per_second"] > 0, name
    vae = saved["models"]["vae"]["variants"]["vae"]["metrics"]
    for key in ("sharpness_mean", "memorization_share", *(
            f"{metric}[{space}]" for metric in ("fid", "kid", "precision", "recall")
            for space in ("random_cnn", "texture", "domain_encoder"))):
        assert np.isfinite(vae[key]), key
    low, high = vae["kid_interval[random_cnn]"]
    assert low < high and vae["kid_subset_size[random_cnn]"] == 6  # min(8 samples, 6 real)
    assert vae["fid_reliable[random_cnn]"] is False  # 6 real images in 224 dimensions
    assert saved["real_metrics"]["n_generated"] == 8  # the reference row at the models' n
    agreement = saved["extractor_agreement"]
    assert set(agreement["orders"]) == {"random_cnn", "texture", "domain_encoder"}
    assert agreement["same_order"] in (True, False)
    assert saved["claims"] and {c["verdict"] for c in saved["claims"]} <= {
        "PASS", "FAIL", "INCONCLUSIVE", "N/A"}
    ddim = saved["models"]["diffusion"]["variants"]["ddim"]
    assert len(ddim["speed_runs"]) == 3 and ddim["timed_images"] == 8  # one shape, 3 runs
    assert ddim["images_per_second"] == np.median(ddim["speed_runs"])
    assert saved["machine"]["cores"] >= 1 and saved["machine"]["tensorflow"]
    sharpness = next(c for c in saved["claims"] if "blurrier" in c["claim"])
    assert sharpness["interval"][0] <= sharpness["effect"] <= sharpness["interval"][1]
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(figures)  # self-contained
    report_md = (run / "report.md").read_text()
    assert "claims" in report_md
    for space in ("random_cnn", "texture", "domain_encoder"):
        assert f"**{space}** (`{tiny_features[1][space]}`" in report_md
    assert "Ranking by KID (best first): the feature spaces" in report_md
    assert "(unreliable)" in report_md
    probes = saved["probes"]  # 3 reference and 3 source slices: one per class each
    assert (probes["n_reference"], probes["n_source"]) == (3, 3)
    assert probes["probes"]["class_collapse"]["random_cnn"]["verdict"] == "N/A"  # 1 slice
    for space in ("random_cnn", "texture", "domain_encoder"):
        assert probes["probes"]["blur"][space]["verdict"] in ("PASS", "FAIL", "INCONCLUSIVE")
    assert "Sanity probes: does each feature space rank a perfect generator first?" in report_md
    assert "| 4x4 patch shuffle | KID above the perfect set's |" in report_md
    share = vae["memorization_share_real"]
    assert f"Held-out real slices score {share:.0%} against the same training" in report_md
    diffusion = load_model(run / "diffusion" / "diffusion.keras")
    assert diffusion.prediction == config.diffusion.prediction == "v"


def test_conditional_compare_scores_class_fidelity_and_tstr(tmp_path, tiny_features, tiny):
    config = experiment.get_config(
        "quick", name="tiny_conditional", conditional=True,
        classifier_members=2, **{**tiny, "models": ("vae", "diffusion"), "n_generate": 9, "diffusion.dpm_steps": 4})
    run = _run_folder(tmp_path, tiny_features)
    experiment.compare(config, run, progress=False)
    saved = json.loads((run / "metrics.json").read_text())
    variants = {**saved["models"]["vae"]["variants"], **saved["models"]["diffusion"]["variants"]}
    assert set(variants) == {"vae", "ddim", "dpm++", "ddpm"}
    for name in ("vae", "ddim", "dpm++"):
        variant = variants[name]
        assert variant["conditional"] and variant["class_counts"] == [3, 3, 3], name
        metrics = variant["metrics"]
        assert 0.0 <= metrics["class_fidelity"] <= 1.0 and 0.0 <= metrics["tstr_accuracy"] <= 1.0
        assert set(metrics["class_fidelity_per_class"]) == {"Normal", "Benign", "Malignant"}
    assert variants["dpm++"]["steps"] == 4 and "w=2" in variants["ddim"]["label"]
    assert 0.0 <= saved["classifier"]["test_accuracy"] <= 1.0
    assert saved["classifier"]["members"] == 2 and saved["classifier"]["steps"] == 20
    judge = keras.saving.load_model(next((run / "features").glob("ct_classifier_*.keras")))
    assert [layer.name for layer in judge.layers if isinstance(layer, keras.Model)] == [
        "ct_classifier_ensemble_0", "ct_classifier_ensemble_1"]
    assert saved["real_metrics"]["tstr_accuracy"] is not None
    assert load_model(run / "vae" / "vae.keras").has_fitted_prior  # sampled from its class prior
    claims = [c["claim"] for c in saved["claims"]]
    assert any("DPM-Solver++ at 4 steps" in c for c in claims)
    assert any("requested class" in c for c in claims)
    report = (run / "report.md").read_text()
    assert "Class fidelity" in report and "TSTR accuracy" in report
    assert "Class-conditional generation" in report
    assert "an ensemble of 2 CNN classifiers (mean probability), 20 optimizer steps each" in report
    figures = {p.name for p in (run / "figures").glob("*.png")}
    assert {"class_samples_vae.png", "class_samples_ddim.png", "class_samples_dpm__.png"} <= figures


def test_compare_reuses_finished_trainings_and_retrains_changed_ones(tmp_path, caplog,
                                                                     tiny_features, tiny):
    """A second compare into the same folder loads what finished, continues what asks for
    more epochs, and trains a changed model again (its old run moved aside)."""
    config = experiment.get_config("quick", name="tiny_reuse",
                                   **{**tiny, "models": ("vae", "denoiser", "latent"),
                                       "latent.autoencoder_epochs": 1,
                                       "latent.diffusion_epochs": 2, "latent.batch_size": 8,
                                       "latent.timesteps": 100, "latent.sampling_steps": 3})
    run = _run_folder(tmp_path, tiny_features)
    experiment.compare(config, run, progress=False)
    first = json.loads((run / "metrics.json").read_text())["models"]
    records = sorted(p.name for p in run.rglob("*.run.json"))
    assert records == ["autoencoder.run.json", "denoiser.run.json", "latent_diffusion.run.json",
                       "vae.run.json"]
    caplog.set_level(logging.INFO, logger="lungkit.training")
    # sampling settings leave the hybrid as it is; more VAE epochs continue the VAE; another
    # learning rate trains the denoiser again
    changed = config.replace(**{"vae.epochs": 3, "denoiser.learning_rate": 1e-4,
                                "latent.sampling_steps": 2})
    experiment.compare(changed, run, progress=False)
    second = json.loads((run / "metrics.json").read_text())["models"]
    assert caplog.text.count("nothing to train") == 2  # the hybrid's two stages
    assert "Settings of denoiser changed (optimizer.learning_rate" in caplog.text
    assert len(list((run / "denoiser").glob("replaced-*/denoiser.keras"))) == 1
    assert second["denoiser"]["history"]["loss"] != first["denoiser"]["history"]["loss"]
    for key in ("seconds_per_epoch", "history"):  # both stages: from the first training
        assert second["latent"][key] == first["latent"][key], key
        assert second["latent"]["autoencoder"][key] == first["latent"]["autoencoder"][key], key
    assert second["vae"]["epochs"] == 3
    assert second["vae"]["history"]["loss"][:2] == first["vae"]["history"]["loss"]
    assert second["latent"]["variants"]["latent"]["steps"] == 2  # sampled anew
