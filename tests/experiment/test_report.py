"""Tests for lungkit.experiment.report's conclusion: it says what the claims' verdicts say."""

from lungkit.experiment import report


def _results(verdicts, source="phantom"):
    return {"config": {"image_size": 32, "n_generate": 48},
            "data": {"n_images": 144, "n_test": 30, "source": source},
            "models": {"vae": {}, "diffusion": {}},
            "claims": [{"claim": f"Claim {i}.", "verdict": v} for i, v in enumerate(verdicts)]}


def test_conclusion_counts_verdicts_and_names_what_failed_or_was_not_decided():
    text = report.conclusion(_results(["PASS", "FAIL", "INCONCLUSIVE", "PASS"]))
    assert "Compared vae, diffusion on 144 synthetic phantom slices at 32 px" in text
    assert "Of 4 claims, 2 passed, 1 failed and 1 were inconclusive" in text
    assert "Failed: Claim 1." in text and "Not decided by these images: Claim 2." in text
    assert "Claim 0." not in text  # passed claims are in the table, not repeated here


def test_conclusion_of_user_data_with_every_claim_passed():
    text = report.conclusion(_results(["PASS", "PASS"], source="user data"))
    assert "user-supplied slices" in text and "Failed" not in text and "Not decided" not in text
