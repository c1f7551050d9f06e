"""Tests for lungkit.experiment.claims: every claim can PASS, FAIL and be INCONCLUSIVE, and
the verdict follows the measured arrays (synthetic numbers: no training)."""

import numpy as np
import pytest

from lungkit.experiment import claims

RNG = np.random.default_rng(0)


def _results(vae_epochs=(1.0,) * 6, den_epochs=(2.0,) * 6, vae_runs=(500.0,) * 3,
             ddim_runs=(5.0,) * 3):
    def noisy(values):
        return [v * (1 + 0.02 * RNG.standard_normal()) for v in values]

    return {"models": {
        "vae": {"history": {"epoch_seconds": [9.0, *noisy(vae_epochs)]},
                "variants": {"vae": {"label": "VAE", "steps": 1, "speed_runs": noisy(vae_runs),
                                     "images_per_second": float(np.median(vae_runs))}}},
        "denoiser": {"history": {"epoch_seconds": [9.0, *noisy(den_epochs)]}, "variants": {}},
        "diffusion": {"variants": {"ddim": {"label": "DDIM", "steps": 50,
                                            "speed_runs": noisy(ddim_runs),
                                            "images_per_second": float(np.median(ddim_runs))}}},
    }}


def _claim(function, results=None, evidence=None):
    return function(results or _results(), evidence or {})


@pytest.mark.parametrize("vae, den, expected", [
    ((1.0,) * 6, (2.0,) * 6, "PASS"), ((2.0,) * 6, (1.0,) * 6, "FAIL"),
    ((1.0, 2.0, 1.0, 2.0, 1.5), (1.0, 2.0, 1.0, 2.0, 1.6), "INCONCLUSIVE"),
    ((1.0,), (2.0,), "INCONCLUSIVE"),  # one timed epoch each: nothing to judge
])
def test_trains_faster(vae, den, expected):
    row = _claim(claims.trains_faster, _results(vae_epochs=vae, den_epochs=den))
    assert row["verdict"] == expected


@pytest.mark.parametrize("vae, ddim, expected", [
    ((500.0,) * 3, (5.0,) * 3, "PASS"), ((5.0,) * 3, (500.0,) * 3, "FAIL"),
    ((5.0, 9.0, 5.0, 9.0), (5.0, 9.0, 5.0, 9.0), "INCONCLUSIVE"),
])
def test_generates_faster(vae, ddim, expected):
    row = _claim(claims.generates_faster, _results(vae_runs=vae, ddim_runs=ddim))
    assert row["verdict"] == expected
    if expected != "INCONCLUSIVE":
        assert row["interval"][0] <= row["effect"] <= row["interval"][1]


def _sharpness(vae, ddim, real=4000.0, n=40, spread=0.1):
    return {"sharpness": {k: v * np.exp(spread * RNG.standard_normal(n))
                          for k, v in (("vae", vae), ("ddim", ddim), ("real", real))}}


def test_blurrier_passes_for_a_blurry_vae_and_fails_for_a_sharp_one():
    assert _claim(claims.blurrier, evidence=_sharpness(1500.0, 3800.0))["verdict"] == "PASS"
    assert _claim(claims.blurrier, evidence=_sharpness(3900.0, 1500.0))["verdict"] == "FAIL"


def test_blurrier_does_not_reward_a_noisy_diffusion_model():
    # DDIM far above the real sharpness (noise) is as far from real as the VAE is below it
    row = _claim(claims.blurrier, evidence=_sharpness(1500.0, 4000.0 * 4000.0 / 1500.0))
    assert row["verdict"] != "PASS"
    noisier = _claim(claims.blurrier, evidence=_sharpness(1500.0, 40000.0))
    assert noisier["verdict"] == "FAIL"


def test_blurrier_is_inconclusive_when_the_gap_is_near_the_margin():
    # log(4000 / 3270) = 0.20 = the margin, DDIM at the real value; wide spread, few images
    row = _claim(claims.blurrier, evidence=_sharpness(3270.0, 4000.0, n=12, spread=0.5))
    assert row["verdict"] == "INCONCLUSIVE"


def _features(vae_shift, ddim_shift, n=40, dims=8):
    return {"features": {"vae": RNG.normal(vae_shift, 1, (n, dims)),
                         "ddim": RNG.normal(ddim_shift, 1, (n, dims)),
                         "real": RNG.normal(0, 1, (n, dims))}}


@pytest.mark.parametrize("vae_shift, ddim_shift, expected", [
    (1.0, 0.0, "PASS"), (0.0, 1.0, "FAIL"), (0.0, 0.0, "INCONCLUSIVE")])
def test_more_detail_follows_the_kid_difference(vae_shift, ddim_shift, expected):
    row = _claim(claims.more_detail, evidence=_features(vae_shift, ddim_shift))
    assert row["verdict"] == expected and "KID(VAE) - KID(DDIM)" in row["evidence"]


def _solvers(ddim_kid):
    return {"claim_space": "random_cnn", "models": {"diffusion": {"variants": {
        "ddim": {"label": "DDIM", "steps": 50, "images_per_second": 2.0,
                 "metrics": {"kid[random_cnn]": ddim_kid, "kid[texture]": 1e6}},
        "dpm++": {"label": "DPM++", "steps": 20, "images_per_second": 5.0}}}}}


@pytest.mark.parametrize("dpm_shift, ddim_kid, expected", [
    # DDIM's own KID 3.0: DPM++ may be worse by up to 0.3
    (0.0, 3.0, "PASS"),  # the same distribution: the gap's interval [-0.14, 0.11] > -0.3
    (1.5, 3.0, "FAIL"),  # far off real, DDIM on it: worse by about 40
    (0.3, 3.0, "INCONCLUSIVE"),  # a small shift: the interval [-0.73, -0.18] holds -0.3
    (0.0, 0.5, "INCONCLUSIVE"),  # a tight margin (-0.05) that 120 images cannot resolve
])
def test_dpm_no_worse_is_a_non_inferiority_test(dpm_shift, ddim_kid, expected):
    n, dims = 120, 8
    rng = np.random.default_rng(3)
    evidence = {"features": {"ddim": rng.normal(0, 1, (n, dims)),
                             "dpm++": rng.normal(dpm_shift, 1, (n, dims)),
                             "real": rng.normal(0, 1, (n, dims))}}
    row = claims.dpm_no_worse(_solvers(ddim_kid), evidence)
    assert row["verdict"] == expected, row
    assert row["margin"] == pytest.approx(-0.1 * ddim_kid)
    assert "KID(DDIM) - KID(DPM++)" in row["evidence"] and "20 steps" in row["claim"]
    assert claims.dpm_no_worse(_solvers(ddim_kid), {"features": {}}) is None
    other_space = {**_solvers(ddim_kid), "claim_space": "domain_encoder"}
    assert claims.dpm_no_worse(other_space, evidence)["verdict"] == "INCONCLUSIVE"


@pytest.mark.parametrize("sample_similarity, control_similarity, expected", [
    (0.95, 0.80, "PASS"), (0.6, 0.50, "FAIL"), (0.75, 0.60, "INCONCLUSIVE"),
    (0.95, 0.95, "INCONCLUSIVE"),  # no better than the noised input: the gap to control is 0
    (0.85, 0.99, "FAIL"),  # worse than doing nothing
])
def test_denoiser_imitates_is_judged_against_held_out_slices_and_a_control(
        sample_similarity, control_similarity, expected):
    # held-out real slices resemble their nearest training slice at 0.70 on average; the
    # margin is 0.05, so 0.75 sits on it
    def centred(mean):  # spread 0.05, mean exact: the verdict does not hang on the draw
        z = RNG.normal(0.0, 0.05, 30)
        return mean + z - z.mean()

    evidence = {"similarity": {"denoiser_paper": centred(sample_similarity),
                               "real": centred(0.70), "denoiser_input": centred(control_similarity)}}
    assert _claim(claims.denoiser_imitates, evidence=evidence)["verdict"] == expected


def test_the_identity_denoiser_does_not_pass():
    noised = RNG.normal(0.95, 0.02, 30)  # the identity returns its noised input unchanged
    evidence = {"similarity": {"denoiser_paper": noised, "denoiser_input": noised.copy(),
                               "real": RNG.normal(0.70, 0.02, 30)}}
    assert _claim(claims.denoiser_imitates, evidence=evidence)["verdict"] != "PASS"
    del evidence["similarity"]["denoiser_input"]  # without the control nothing can be decided
    assert _claim(claims.denoiser_imitates, evidence=evidence)["verdict"] == "INCONCLUSIVE"


@pytest.mark.parametrize("outputs, expected", [
    (np.full(40, 0.30), "PASS"),  # nothing from noise resembles CT
    (np.full(40, 0.85), "FAIL"),  # everything does: a generative model
    (np.r_[np.full(18, 0.30), np.full(2, 0.85)], "INCONCLUSIVE"),  # 10% of 20: on the line
])
def test_not_generative_uses_an_absolute_criterion(outputs, expected):
    # held-out real slices: nearest-training similarity 0.80 +- 0.02 (5% quantile ~0.77)
    real = 0.80 + 0.02 * RNG.standard_normal(60)
    row = _claim(claims.not_generative, evidence={"similarity": {"denoiser_noise": outputs,
                                                                 "real": real}})
    assert row["verdict"] == expected and row["margin"] == 0.0
    assert row["interval"][0] <= row["effect"] <= row["interval"][1]


def test_not_generative_is_not_judged_against_training_copies():
    # the old rule compared KID with training copies; the criterion must not need them
    evidence = {"similarity": {"denoiser_noise": np.full(40, 0.3)},
                "features": {"reference": RNG.normal(0, 1, (40, 8))}}
    assert claims.not_generative({}, evidence) is None  # no held-out baseline: not measured


def _conditional(fidelity, per_class):
    return {"models": {"vae": {"variants": {"vae": {
        "label": "cVAE", "conditional": True, "class_counts": [per_class] * 3,
        "metrics": {"class_fidelity": fidelity}}}}}}


@pytest.mark.parametrize("fidelity, per_class, expected", [
    (0.40, 200, "PASS"),  # 240 of 600: the 90% interval [0.37, 0.43] is above 1/3
    (0.40, 20, "INCONCLUSIVE"),  # 24 of 60: [0.30, 0.51] contains 1/3
    (0.20, 200, "FAIL"),  # below chance
])
def test_class_fidelity_needs_its_interval_above_chance(fidelity, per_class, expected):
    row = claims.class_fidelity(_conditional(fidelity, per_class), {})
    assert row["verdict"] == expected and f"of {3 * per_class}" in row["evidence"]


def test_check_claims_keeps_the_measured_claims_only_and_every_row_explains_itself():
    evidence = {**_sharpness(1500.0, 3800.0), **_features(1.0, 0.0)}
    rows = claims.check_claims(_results(), evidence)
    assert [r["verdict"] for r in rows] == ["PASS"] * 4
    for row in rows:
        assert row["interval"][0] <= row["effect"] <= row["interval"][1] and row["level"] == 0.95
    assert claims.check_claims({"models": {}}) == []
