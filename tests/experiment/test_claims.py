"""Tests for lungkit.experiment.claims: each verdict follows the measured numbers."""

from lungkit.experiment import claims


def test_claims_compare_the_measured_numbers():
    def variant(label, speed, sharp, kid, share=0.0):
        return {"label": label, "steps": 50, "images_per_second": speed,
                "metrics": {"sharpness_mean": sharp, "kid_mean": kid, "fid": kid * 1000,
                            "memorization_share": share, "nearest_similarity_mean": 0.5}}

    results = {"models": {
        "vae": {"seconds_per_epoch": 1.0, "variants": {"vae": variant("VAE", 500, 10, 0.2)}},
        "denoiser": {"seconds_per_epoch": 2.0, "variants": {
            "denoiser_paper": variant("p", 100, 50, 0.01, share=0.9),
            "denoiser_noise": variant("n", 100, 5, 0.5)}},
        "diffusion": {"seconds_per_epoch": 3.0, "variants": {"ddim": variant("DDIM", 5, 40, 0.05)}},
    }, "real_metrics": {"sharpness_mean": 45.0}}
    verdicts = [c["verdict"] for c in claims.check_claims(results)]
    assert verdicts == ["PASS"] * 6
    results["models"]["vae"]["variants"]["vae"]["metrics"]["sharpness_mean"] = 99.0
    checked = claims.check_claims(results)
    blurry = next(c for c in checked if "blurrier" in c["claim"])
    assert blurry["verdict"] == "FAIL" and "99.0" in blurry["evidence"]


def test_class_fidelity_claim_needs_a_significant_excess_over_chance():
    def conditional(label, fidelity, per_class):
        return {"label": label, "conditional": True, "class_counts": [per_class] * 3,
                "metrics": {"class_fidelity": fidelity}}

    def verdict(fidelity, per_class):
        results = {"models": {"vae": {"seconds_per_epoch": 1.0, "variants": {
            "vae": conditional("cVAE", fidelity, per_class)}}}}
        claim = next(c for c in claims.check_claims(results) if "requested class" in c["claim"])
        return claim["verdict"], claim["evidence"]

    # 40% of 60 is 24 hits: p = 0.17 against 1/3; 40% of 600 is 240 hits: p < 1e-3
    assert verdict(0.4, 20)[0] == "FAIL" and "(p=0.17)" in verdict(0.4, 20)[1]
    assert verdict(0.4, 200)[0] == "PASS"
    assert claims.above_chance_p(1 / 3, 300, 1 / 3) > 0.4
