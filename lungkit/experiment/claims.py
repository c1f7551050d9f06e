"""The paper's claims, each a test with three outcomes: PASS, FAIL or INCONCLUSIVE.

`check_claims(results, evidence)` reads the results dict of `lungkit.experiment.compare` and
the per-image arrays it kept (`evidence`, see `check_claims`). Each claim is one function that
measures an effect, puts a bootstrap interval around it (`lungkit.evaluation.statistics`) and
compares the interval with the claim's margin: PASS when the whole interval is beyond it, FAIL
when the whole interval is short of it, INCONCLUSIVE when these images cannot decide. A claim
whose inputs were not measured reads N/A.
"""

import numpy as np

from lungkit.data.labels import NUM_CLASSES
from lungkit.evaluation.statistics import (
    Interval,
    bootstrap,
    feature_key,
    kid_difference,
    mean_difference,
    median_ratio,
    verdict,
)

SIGNIFICANCE = 0.05  # one-sided level of the class-fidelity test (two-sided interval 90%)
SPEED_MARGIN = 1.0  # "faster": the ratio of median times exceeds 1
SHARPNESS_MARGIN = 0.2  # "blurrier": a log-sharpness gap of 0.2 (sharpness x 0.82) or more
SIMILARITY_MARGIN = 0.05  # "imitates": nearest-training similarity 0.05 above held-out slices
NON_INFERIORITY = 0.1  # "no worse": KID worse by less than 10% of the reference's KID
CT_LIKE_QUANTILE = 0.05  # "CT-like": as near a training slice as 95% of held-out real slices
MAX_CT_LIKE_SHARE = 0.1  # "not generative": fewer than 10% of its noise outputs are CT-like


def _claim(text, interval=None, margin=None, evidence="", outcome=None):
    """A claim's row: verdict from `interval` vs `margin` (or `outcome`), effect, interval."""
    if outcome is None:
        outcome = "N/A" if interval is None else verdict(interval, margin)
    row = {"claim": text, "verdict": outcome, "evidence": evidence, "margin": margin}
    if interval is not None:
        row.update(effect=interval.estimate, interval=[interval.low, interval.high],
                   level=interval.level)
    return row


def _variant(results, model, variant):
    return results["models"].get(model, {}).get("variants", {}).get(variant)


def _steady_epochs(results, model):
    seconds = results["models"][model].get("history", {}).get("epoch_seconds", [])
    return list(seconds[1:])  # the first epoch includes tracing


def trains_faster(results, evidence):
    text = "The VAE trains faster per epoch than the diffusion (denoiser) model."
    if not {"vae", "denoiser"} <= set(results["models"]):
        return None
    vae, den = _steady_epochs(results, "vae"), _steady_epochs(results, "denoiser")
    if min(len(vae), len(den)) < 2:
        return _claim(text, outcome="INCONCLUSIVE",
                      evidence=f"too few timed epochs ({len(vae)} VAE, {len(den)} denoiser; "
                      "the first epoch, which traces, is not counted)")
    ratio = median_ratio(den, vae)
    return _claim(text, ratio, SPEED_MARGIN, f"denoiser/VAE seconds per epoch {ratio.text()}; "
                  f"VAE {np.median(vae):.2f} s, denoiser {np.median(den):.2f} s (medians)")


def generates_faster(results, evidence):
    text = "The VAE generates images faster than the diffusion model."
    vae, ddim = _variant(results, "vae", "vae"), _variant(results, "diffusion", "ddim")
    if not (vae and ddim):
        return None
    v_runs, d_runs = vae.get("speed_runs", []), ddim.get("speed_runs", [])
    if min(len(v_runs), len(d_runs)) < 3:
        return _claim(text, outcome="INCONCLUSIVE", evidence="fewer than 3 timed runs per model")
    ratio = median_ratio(v_runs, d_runs)
    return _claim(text, ratio, SPEED_MARGIN,
                  f"VAE/DDIM-{ddim['steps']} images per second {ratio.text()}; VAE "
                  f"{vae['images_per_second']:.1f}, DDIM {ddim['images_per_second']:.2f} img/s")


def blurrier(results, evidence):
    """Judged against the real slices: noise that lifts a model's sharpness above the real
    value counts as far from real, as a blur does, so a noisy diffusion model does not pass."""
    text = ("VAE samples are blurrier than diffusion samples (judged against the real slices: "
            "sharpness above the real value does not count as detail).")
    sharp = evidence.get("sharpness", {})
    if not {"vae", "ddim", "real"} <= set(sharp):
        return None
    v, d, r = (np.log(np.maximum(sharp[k], 1e-12)) for k in ("vae", "ddim", "real"))

    def effect(i, j, m):
        real = r[m].mean()
        return (real - v[i].mean()) - abs(real - d[j].mean())

    gap = bootstrap(effect, (len(v), len(d), len(r)))
    return _claim(text, gap, SHARPNESS_MARGIN,
                  f"log-sharpness deficit of the VAE minus the DDIM's distance to real "
                  f"{gap.text()}; variance of Laplacian (medians) VAE {np.median(sharp['vae']):.0f}"
                  f", DDIM {np.median(sharp['ddim']):.0f}, real {np.median(sharp['real']):.0f}")


def more_detail(results, evidence):
    text = "Diffusion samples are closer to real CT than VAE samples (lower KID)."
    feats = evidence.get("features", {})
    if not {"vae", "ddim", "real"} <= set(feats):
        return None
    gap = kid_difference(feats["vae"], feats["ddim"], feats["real"])
    return _claim(text, gap, 0.0, f"KID(VAE) - KID(DDIM) {gap.text()} "
                  f"({evidence.get('feature_extractor', 'features')})")


def denoiser_imitates(results, evidence):
    """Judged against held-out real slices AND a do-nothing control (the noised inputs
    themselves, what the identity function returns): an identity or untrained denoiser copies
    its input, so it must not pass. PASS needs both gaps beyond the margin, FAIL either short."""
    text = ("The paper's denoiser 'almost perfectly imitates the original image' (its samples "
            "are closer to a training image than held-out real slices and than its own noised "
            "input are).")
    sims = evidence.get("similarity", {})
    if not {"denoiser_paper", "real"} <= set(sims):
        return None
    gap = mean_difference(sims["denoiser_paper"], sims["real"])
    if "denoiser_input" not in sims:
        return _claim(text, gap, SIMILARITY_MARGIN, outcome="INCONCLUSIVE",
                      evidence=f"samples minus held-out real {gap.text()}; no do-nothing "
                      "control measured, so a copy of the input cannot be told apart")
    control = mean_difference(sims["denoiser_paper"], sims["denoiser_input"])
    outcomes = {verdict(gap, SIMILARITY_MARGIN), verdict(control, 0.0)}
    outcome = "FAIL" if "FAIL" in outcomes else (
        "INCONCLUSIVE" if "INCONCLUSIVE" in outcomes else "PASS")
    return _claim(text, control, 0.0, outcome=outcome,
                  evidence=f"nearest-training similarity, samples minus held-out real "
                  f"{gap.text()} (margin {SIMILARITY_MARGIN}); samples minus their noised "
                  f"input (do-nothing control) {control.text()}")


def not_generative(results, evidence):
    """An absolute test, not a comparison with copies of the training set: an output from pure
    noise is "CT-like" when it is as close to a training slice (pixel correlation of 32 px
    thumbnails, which needs no training) as 95% of the held-out real slices are. PASS when
    the share of CT-like outputs is surely below `MAX_CT_LIKE_SHARE`, FAIL when surely above."""
    text = (f"The paper's denoiser is not a generative model: from pure noise, fewer than "
            f"{MAX_CT_LIKE_SHARE:.0%} of its outputs are as close to a training slice as held-out "
            "real slices are.")
    sims = evidence.get("similarity", {})
    if not {"denoiser_noise", "real"} <= set(sims):
        return None
    outputs, real = (np.asarray(sims[k], "float64") for k in ("denoiser_noise", "real"))

    def room(i, m):  # the stated share minus the measured share: > 0 supports the claim
        floor = np.quantile(real[m], CT_LIKE_QUANTILE)
        return MAX_CT_LIKE_SHARE - (outputs[i] >= floor).mean()

    gap = bootstrap(room, (len(outputs), len(real)))
    floor = np.quantile(real, CT_LIKE_QUANTILE)
    share = float((outputs >= floor).mean())
    return _claim(text, gap, 0.0, f"{MAX_CT_LIKE_SHARE:.0%} minus the share of CT-like outputs "
                  f"{gap.text()}; {share:.0%} of {len(outputs)} outputs reach the held-out "
                  f"slices' {CT_LIKE_QUANTILE:.0%} quantile of nearest-training similarity "
                  f"({floor:.3f})")


def dpm_no_worse(results, evidence):
    dpm, ddim = _variant(results, "diffusion", "dpm++"), _variant(results, "diffusion", "ddim")
    feats = evidence.get("features", {})
    if not (dpm and ddim and {"dpm++", "ddim", "real"} <= set(feats)):
        return None
    text = (f"(Beyond the paper) DPM-Solver++ at {dpm['steps']} steps is no worse than DDIM at "
            f"{ddim['steps']} steps (KID worse by less than {NON_INFERIORITY:.0%} of DDIM's).")
    # the margin scales with DDIM's own KID in the space the gap is measured in
    ddim_kid = (ddim.get("metrics") or {}).get(feature_key("kid", results.get("claim_space")))
    if ddim_kid is None:
        return _claim(text, outcome="INCONCLUSIVE", evidence="DDIM's KID in the claims' "
                      "feature space was not measured: no margin to test against")
    gap = kid_difference(feats["ddim"], feats["dpm++"], feats["real"])  # > 0: DPM++ better
    margin = -NON_INFERIORITY * abs(ddim_kid)
    return _claim(text, gap, margin, f"KID(DDIM) - KID(DPM++) {gap.text()}; margin {margin:.3g}; "
                  f"{dpm['images_per_second']:.2f} vs {ddim['images_per_second']:.2f} img/s")


def class_fidelity(results, evidence):
    conditioned = [(v["label"], v["metrics"]["class_fidelity"], sum(v["class_counts"]))
                   for entry in results["models"].values()
                   for v in entry.get("variants", {}).values()
                   if v.get("conditional") and (v.get("metrics") or {}).get("class_fidelity")
                   is not None]
    if not conditioned:
        return None
    chance = 1.0 / NUM_CLASSES
    text = (f"(Beyond the paper) Class-conditional models generate the requested class (class "
            f"fidelity above chance, {chance:.0%}; one-sided level {SIGNIFICANCE}).")
    rows = [(label, fidelity_interval(value, n)) for label, value, n in conditioned]
    outcomes = {verdict(interval, chance) for _, interval in rows}
    outcome = "FAIL" if "FAIL" in outcomes else (
        "INCONCLUSIVE" if "INCONCLUSIVE" in outcomes else "PASS")
    evidence_text = "; ".join(f"{label} {interval.text(2)} of {n}" for (label, interval), (_, _, n)
                              in zip(rows, conditioned, strict=True))
    if results.get("classifier"):
        evidence_text += f"; real held-out slices {results['classifier']['test_accuracy']:.0%}"
    return _claim(text, evidence=evidence_text, outcome=outcome, margin=chance)


def fidelity_interval(accuracy, n):
    """Clopper-Pearson interval of a class-fidelity share over `n` samples, at 1 - 2 alpha."""
    from scipy.stats import binomtest

    hits = int(round(accuracy * n))
    ci = binomtest(hits, n).proportion_ci(confidence_level=1.0 - 2.0 * SIGNIFICANCE)
    return Interval(hits / n, float(ci.low), float(ci.high), 1.0 - 2.0 * SIGNIFICANCE)


CLAIMS = (trains_faster, generates_faster, blurrier, more_detail, denoiser_imitates,
          dpm_no_worse, class_fidelity, not_generative)


def check_claims(results, evidence=None):
    """Every claim the run measured, as a list of rows.

    Args:
        results: the results dict of `compare` (models, variants, histories, timings).
        evidence: per-image arrays kept by `compare`: `sharpness` and `features` (dicts from a
            variant name, "real" (held-out slices) or "reference" (training slices scored
            like samples) to an array), `similarity` (nearest-training similarity per image),
            `feature_extractor` (its name).

    Returns:
        Rows `{claim, verdict, evidence, margin}`, plus `effect`, `interval` and `level` where
        an interval decided the verdict. Verdicts are PASS, FAIL, INCONCLUSIVE or N/A.
    """
    rows = [claim(results, evidence or {}) for claim in CLAIMS]
    return [row for row in rows if row is not None]

