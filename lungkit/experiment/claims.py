"""The paper's claims checked against the measured numbers of a comparison run.

`check_claims(results)` reads the results dict of `lungkit.experiment.compare.compare` and
returns one verdict per claim that the run measured.
"""

from lungkit.data.labels import NUM_CLASSES

SIGNIFICANCE = 0.05  # the claims' one-sided test level (class fidelity above chance)


def _variant(results, model, variant):
    return results["models"].get(model, {}).get("variants", {}).get(variant)


def check_claims(results):
    """Checks each of the paper's conclusions against the measured numbers.

    Returns a list of dicts `{claim, verdict ("PASS" | "FAIL" | "N/A"), evidence}`.
    """
    claims = []

    def add(claim, passed, evidence):
        verdict = "N/A" if passed is None else ("PASS" if passed else "FAIL")
        claims.append({"claim": claim, "verdict": verdict, "evidence": evidence})

    vae = _variant(results, "vae", "vae")
    ddim = _variant(results, "diffusion", "ddim")
    ddpm = _variant(results, "diffusion", "ddpm")
    paper = _variant(results, "denoiser", "denoiser_paper")
    from_noise = _variant(results, "denoiser", "denoiser_noise")
    models = results["models"]

    if "vae" in models and "denoiser" in models:
        v, d = models["vae"]["seconds_per_epoch"], models["denoiser"]["seconds_per_epoch"]
        add("The VAE trains faster per epoch than the diffusion (denoiser) model.", v < d,
            f"VAE {v:.2f} s/epoch vs denoiser {d:.2f} s/epoch")
    if vae and ddim:
        v, d = vae["images_per_second"], ddim["images_per_second"]
        add("The VAE generates images faster than the diffusion model.", v > d,
            f"VAE {v:.1f} img/s vs DDIM-{ddim['steps']} {d:.2f} img/s"
            + (f" vs DDPM-{ddpm['steps']} {ddpm['images_per_second']:.3f} img/s" if ddpm else ""))
        vs, ds = vae["metrics"]["sharpness_mean"], ddim["metrics"]["sharpness_mean"]
        real = results.get("real_metrics", {}).get("sharpness_mean")
        add("VAE samples are blurrier than diffusion samples.", vs < ds,
            f"sharpness (variance of Laplacian) VAE {vs:.1f} vs DDIM {ds:.1f}"
            + (f" (real images {real:.1f})" if real is not None else ""))
        vf, df = vae["metrics"].get("kid_mean"), ddim["metrics"].get("kid_mean")
        if vf is not None and df is not None:
            add("Diffusion samples keep more detail of real CT than VAE samples (lower KID/FID).",
                df < vf,
                f"KID VAE {vf:.4f} vs DDIM {df:.4f}; FID VAE {vae['metrics']['fid']:.2f} "
                f"vs DDIM {ddim['metrics']['fid']:.2f}")
    if paper:
        share = paper["metrics"].get("memorization_share")
        sim = paper["metrics"].get("nearest_similarity_mean")
        add("The paper's denoiser 'almost perfectly imitates the original image' "
            "(its samples are noised training images, restored).",
            None if share is None else share >= 0.5,
            f"{share:.0%} of its samples are near-copies of a training image "
            f"(mean nearest similarity {sim:.3f})" if share is not None else "not measured")
    dpm = _variant(results, "diffusion", "dpm++")
    if dpm and ddim and dpm.get("metrics") and ddim.get("metrics") \
            and dpm["metrics"].get("kid_mean") is not None \
            and ddim["metrics"].get("kid_mean") is not None:
        pk, dk = dpm["metrics"]["kid_mean"], ddim["metrics"]["kid_mean"]
        tolerance = max(dpm["metrics"].get("kid_std") or 0.0, ddim["metrics"].get("kid_std") or 0.0)
        add(f"(Beyond the paper) DPM-Solver++ at {dpm['steps']} steps is no worse than DDIM at "
            f"{ddim['steps']} steps (KID, within one subset std).", pk <= dk + tolerance,
            f"KID DPM++-{dpm['steps']} {pk:.4f} vs DDIM-{ddim['steps']} {dk:.4f} (std "
            f"{tolerance:.4f}); FID {dpm['metrics']['fid']:.2f} vs {ddim['metrics']['fid']:.2f}; "
            f"{dpm['images_per_second']:.2f} vs {ddim['images_per_second']:.2f} img/s")
    conditioned = [(v["label"], v["metrics"]["class_fidelity"], sum(v["class_counts"]))
                   for entry in models.values() for v in entry.get("variants", {}).values()
                   if v.get("conditional") and (v.get("metrics") or {}).get("class_fidelity")
                   is not None]
    if conditioned:
        chance = 1.0 / NUM_CLASSES
        p_values = [above_chance_p(value, n, chance) for _, value, n in conditioned]
        add("(Beyond the paper) Class-conditional models generate the requested class "
            f"(class fidelity above chance, {chance:.0%}: one-sided binomial p < "
            f"{SIGNIFICANCE}).",
            all(p < SIGNIFICANCE for p in p_values),
            "; ".join(f"{label} {value:.0%} of {n} (p={p:.2g})"
                      for (label, value, n), p in zip(conditioned, p_values, strict=True))
            + (f"; real held-out slices {results['classifier']['test_accuracy']:.0%}"
               if results.get("classifier") else ""))
    if paper and from_noise:
        pf, nf = paper["metrics"].get("kid_mean"), from_noise["metrics"].get("kid_mean")
        if pf is not None and nf is not None:
            add("The paper's denoiser is not a generative model: from pure noise it does not "
                "produce CT slices.", nf > pf,
                f"KID from noise {nf:.4f} vs from noised real images {pf:.4f}")
    return claims


def above_chance_p(accuracy, n, chance):
    """One-sided binomial p-value of `accuracy` over `n` trials against `chance` (scipy)."""
    from scipy.stats import binomtest

    return float(binomtest(int(round(accuracy * n)), n, chance, alternative="greater").pvalue)
