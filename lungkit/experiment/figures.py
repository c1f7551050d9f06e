"""The report's figures: real slices, VAE and diffusion samples, curves, classes, speed.

Each `_x_figure(s)` draws its PNGs into `figures_dir` and returns `[(path, caption)]`;
`draw_figures` draws them all in the report's order.
"""

import numpy as np

from lungkit.data.labels import CLASS_NAMES, labels_from_counts

SAMPLES_PER_FIGURE = 16


def _real_figure(viz, real, figures_dir):
    """Fig. 1: real slices per class (the paper's Figure 1)."""
    real_x, real_y = real
    rows = {}
    for label, name in enumerate(CLASS_NAMES):
        picked = real_x[np.asarray(real_y) == label][:6]
        if len(picked):
            rows[name] = picked
    path = figures_dir / "fig1_real_per_class.png"
    viz.comparison_figure(rows, path, ncols=6)
    return [(path, "Figure 1. Real training slices, one row per class.")]


def _vae_figure(viz, samples, figures_dir):
    """Fig. 2: VAE samples in two rows, drawn large enough to judge blur."""
    if "vae" not in samples:
        return []
    path = figures_dir / "fig2_vae_samples.png"
    vae_samples = samples["vae"][:SAMPLES_PER_FIGURE]
    half = (len(vae_samples) + 1) // 2
    viz.comparison_figure({"VAE": vae_samples[:half], " ": vae_samples[half:]}
                          if len(vae_samples) > 1 else {"VAE": vae_samples},
                          path, ncols=half)
    return [(path, "Figure 2. VAE samples (z ~ N(0, I), decoded).")]


def _diffusion_figure(viz, results, samples, figures_dir):
    """Fig. 3: one row per diffusion-family model and sampler."""
    rows = {}
    for variant, images in samples.items():
        if variant == "vae":
            continue
        label = next(e["variants"][variant]["label"] for e in results["models"].values()
                     if variant in e["variants"])
        rows[label] = images[:8]
    if not rows:
        return []
    path = figures_dir / "fig3_diffusion_samples.png"
    viz.comparison_figure(rows, path, ncols=8)
    return [(path, "Figure 3. Samples of the diffusion-family models, one row per model and "
                   "sampler.")]


def _curve_figures(viz, results, figures_dir):
    """Figs. 4-7: each model's training losses per epoch."""
    made = []
    for number, (model, title) in enumerate(
        (("vae", "VAE training losses"), ("denoiser", "Denoiser training loss (MSE)"),
         ("diffusion", "DDPM training loss"), ("latent", "Latent diffusion training loss")),
        start=4,
    ):
        entry = results["models"].get(model)
        history = {k: v for k, v in (entry or {}).get("history", {}).items()
                   if k.endswith("loss")}
        if history:
            path = figures_dir / f"fig{number}_{model}_curves.png"
            viz.plot_history(history, path=path, title=title)
            made.append((path, f"Figure {number}. {title} per epoch."))
    return made


def _class_figures(viz, results, samples, figures_dir):
    """Conditional models: one row of samples per requested class."""
    made = []
    for entry in results["models"].values():
        for name, variant in entry["variants"].items():
            if not variant.get("conditional") or name not in samples \
                    or not variant.get("evaluate", True):
                continue
            labels = labels_from_counts(variant["class_counts"])
            rows = {class_name: samples[name][labels == k][:8]
                    for k, class_name in enumerate(CLASS_NAMES) if (labels == k).any()}
            slug = "".join(ch if ch.isalnum() else "_" for ch in name)
            path = figures_dir / f"class_samples_{slug}.png"
            viz.comparison_figure(rows, path, ncols=8, title=variant["label"])
            made.append((path, f"{variant['label']}: samples of each requested class, one row "
                               "per class."))
    return made


def _speed_and_sharpness_figures(viz, results, figures_dir):
    """Bar charts: generation speed, and sharpness beside the real images'."""
    variants = [v for e in results["models"].values() for v in e["variants"].values()]
    if not variants:
        return []
    path = figures_dir / "speed.png"
    viz.bar_chart([v["label"] for v in variants], [v["images_per_second"] for v in variants],
                  path, xlabel="images per second (log scale)", title="Generation speed",
                  log=True)
    made = [(path, "Generation speed: images per second on this machine.")]
    scored = [(v["label"], v["metrics"]) for v in variants if v.get("metrics")]
    if scored:
        path = figures_dir / "sharpness.png"
        values = [m.get("sharpness_mean", np.nan) for _, m in scored]
        names = [name for name, _ in scored]
        if results.get("real_metrics"):
            names.append("Real images")
            values.append(results["real_metrics"].get("sharpness_mean", np.nan))
        # log scale: pure-noise samples sit 10-100x above the rest, which would flatten
        # the VAE / hybrid / real bars that the comparison is about
        viz.bar_chart(names, values, path, xlabel="variance of the Laplacian (log scale)",
                      title="Sharpness (higher = sharper)", log=True)
        made.append((path, "Sharpness (variance of the Laplacian) of the samples beside "
                           "the real images. Noise raises it too: read it beside KID/FID, "
                           "and closest to the real value is best."))
    return made


def draw_figures(results, samples, real, figures_dir):
    """Draws every figure; returns a list of `(path, caption)`."""
    from lungkit import viz

    figures_dir.mkdir(parents=True, exist_ok=True)
    return (_real_figure(viz, real, figures_dir) + _vae_figure(viz, samples, figures_dir)
            + _diffusion_figure(viz, results, samples, figures_dir)
            + _curve_figures(viz, results, figures_dir)
            + _class_figures(viz, results, samples, figures_dir)
            + _speed_and_sharpness_figures(viz, results, figures_dir))
