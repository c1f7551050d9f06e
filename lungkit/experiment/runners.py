"""The comparison experiment's per-model steps: train one model, time and keep its samples.

`train_and_sample(model_name, config, ...)` dispatches to `run_vae`, `run_denoiser`,
`run_diffusion` or `run_latent` (`RUNNERS`); each builds its model from the config section,
trains it with `lungkit.training.fit` (`_train`, which also records the epoch timings) and
generates `config.n_generate` samples per sampling variant, timed by `timed_generate`.
`lungkit.experiment.compare` evaluates and reports them. Models and Keras are imported inside
the functions, so importing this module (and `lungkit.experiment`) stays light.
"""

import logging
import time
from pathlib import Path

import numpy as np

from lungkit.data.labels import NUM_CLASSES, balanced_labels, class_counts

logger = logging.getLogger(__name__)



def _conditional_variant(labels):
    """The variant-dict keys that mark samples as conditional (read by `compare` and report)."""
    return {"conditional": True,
            "class_counts": class_counts(labels)}


def _class_arguments(config, section):
    """Constructor arguments that make a model class-conditional, `{}` when not asked for."""
    if not config.conditional:
        return {}
    return {"num_classes": NUM_CLASSES, "class_dropout": section.class_dropout}


def _diffusion_arguments(section):
    """The denoising-diffusion settings that the pixel and the latent config sections share."""
    return {"timesteps": section.timesteps, "schedule": section.schedule,
            "prediction": section.prediction, "widths": section.widths,
            "blocks_per_level": section.blocks_per_level,
            "attention_levels": section.attention_levels, "ema_decay": section.ema_decay}


def timed_generate(generate, n, config, repeats=None, warmup=None, **kwargs):
    """Generates `n` images, then times `repeats` runs on `config.timing_images` of them.

    Every model is timed at one batch shape (`config.timing_images`, cut to `n`), after a
    warm-up call at that shape, so no timed run traces. The warm-up is the sampling call itself
    when the shapes agree, or `warmup(timed, **kwargs)` when given: a cheap call that traces
    what `generate` runs (for the DDPM chain, `ddpm_warmup`), after which the first timed run
    supplies the images when `n` is the timed size. A per-image `label` sequence is cut to the
    timed size.

    Returns:
        `(images, timing)`: timing holds `images_per_second` (the median run),
        `speed_runs` (images per second of each run) and `timed_images`.
    """
    timed = min(n, config.timing_images)
    options = dict(kwargs)
    if isinstance(options.get("label"), (list, tuple, np.ndarray)):
        options["label"] = options["label"][:timed]
    images = None
    if warmup is not None:
        warmup(timed, **options)
    else:
        images = np.asarray(generate(n, **kwargs))  # also the warm-up when n == timed
        if timed != n:
            generate(timed, **options)  # traces the timed shape
    runs = []
    for _ in range(config.timing_repeats if repeats is None else repeats):
        start = time.perf_counter()
        output = generate(timed, **options)
        runs.append(timed / max(time.perf_counter() - start, 1e-9))
        if images is None and timed == n:
            images = np.asarray(output)
    if images is None:
        images = np.asarray(generate(n, **kwargs))
    return images, {"images_per_second": float(np.median(runs)), "speed_runs": runs,
                    "timed_images": timed}


def ddpm_warmup(model):
    """A `timed_generate` warm-up for `model.generate(..., sampler="ddpm")`: DDIM-2 with
    eta = 1 runs the same two step graphs as the ancestral chain (a noisy step and the final,
    noise-free one) at the same shape, in 2 network calls instead of T."""

    def warmup(count, **options):
        model.generate(count, **{**options, "steps": 2, "sampler": "ddim", "eta": 1.0})

    return warmup


def _train(model, config_section, train_x, train_y, out_dir, config, name, epochs=None):
    """Compiles `model` with Adam, fits it with lungkit's callbacks, returns the entry dict.

    Trains `epochs` epochs, default `config_section.epochs`. A training that finished in
    `out_dir` with the same settings and data is loaded, not repeated (its epoch timings come
    from its `history.csv`); one with other settings is moved aside and trained again
    (`lungkit.training.fit`, `retrain="if_changed"`).
    """
    import keras

    from lungkit import training
    from lungkit.data.pipeline import make_dataset

    out_dir = Path(out_dir)
    model.compile(optimizer=keras.optimizers.Adam(config_section.learning_rate))
    epochs = config_section.epochs if epochs is None else epochs
    dataset = make_dataset(
        train_x, train_y, batch_size=config_section.batch_size, image_size=config.image_size,
        channels=config.channels, shuffle=True, seed=config.seed,
        with_labels=getattr(model, "num_classes", None) is not None,
    )
    history = training.fit(model, dataset, epochs=epochs, out_dir=out_dir, name=name,
                           retrain="if_changed")
    seconds = list(history.get("epoch_seconds", []))
    steady = seconds[1:] if len(seconds) > 1 else seconds  # the first epoch includes tracing
    return {
        "parameters": int(model.count_params()),
        "epochs": len(history.get("epoch", [])),
        "seconds_per_epoch": float(np.mean(steady)) if steady else float("nan"),
        "first_epoch_seconds": float(seconds[0]) if seconds else float("nan"),
        "train_images_per_second": float(np.mean(history.get("images_per_second", [np.nan])[1:]
                                                 or history.get("images_per_second", [np.nan]))),
        "history": {k: [float(x) for x in v] for k, v in history.items()},
        "variants": {},
    }


def run_vae(config, train_x, train_y, out_dir, progress=True):
    """Trains the paper's VAE (conditional when `config.conditional`) and samples it."""
    from lungkit.models.vae import VAE

    out_dir = Path(out_dir)
    image_size, channels, seed, n = config.image_size, config.channels, config.seed, config.n_generate
    c = config.vae
    conditional = _class_arguments(config, c)
    model = VAE(image_size=image_size, channels=channels, latent_dim=c.latent_dim,
                widths=c.widths, beta=c.beta, decoder=c.decoder, seed=seed, **conditional)
    entry = _train(model, c, train_x, train_y, out_dir, config, "vae")  # fits the class prior
    labels = {"label": balanced_labels(n)} if config.conditional else {}
    images, timing = timed_generate(model.generate, n, config, seed=seed, **labels)
    label = "Conditional VAE (fitted class prior)" if labels else "VAE"
    entry["variants"]["vae"] = {"label": label, "steps": 1, **timing}
    if labels:
        entry["variants"]["vae"].update(_conditional_variant(labels["label"]))
    return entry, {"vae": images}


def run_denoiser(config, train_x, train_y, out_dir, progress=True):
    """Trains the paper's U-Net denoiser and samples it two ways.

    From noised training images (the paper's way) and from pure noise.
    """
    from lungkit.models.denoiser import UNetDenoiser

    out_dir = Path(out_dir)
    image_size, channels, seed, n = config.image_size, config.channels, config.seed, config.n_generate
    c = config.denoiser
    model = UNetDenoiser(image_size=image_size, channels=channels, noise_std=c.noise_std,
                         widths=c.widths, seed=seed)
    entry = _train(model, c, train_x, train_y, out_dir, config, "denoiser")
    pick = np.random.default_rng(seed).choice(len(train_x), size=n, replace=len(train_x) < n)
    paper, paper_timing = timed_generate(model.generate, n, config,
                                         source_images=train_x[pick], seed=seed,
                                         progress=progress)
    noise, noise_timing = timed_generate(model.generate, n, config, seed=seed, progress=progress)
    entry["variants"]["denoiser_paper"] = {
        "label": "Denoiser (paper: noised training images)", "steps": 1, **paper_timing}
    entry["variants"]["denoiser_noise"] = {
        "label": "Denoiser from pure noise", "steps": 1, **noise_timing}
    # the do-nothing control: the noised inputs themselves, what an identity denoiser returns;
    # not a variant (compare keeps only its nearest-training similarity for the claims)
    control = np.asarray(model.add_noise(train_x[pick], c.noise_std,
                                         seed=None if seed is None else seed + 1))
    return entry, {"denoiser_paper": paper, "denoiser_noise": noise, "denoiser_input": control}


def run_diffusion(config, train_x, train_y, out_dir, progress=True):
    """Trains the DDPM and samples it with DDIM, DPM-Solver++ and the full DDPM chain.

    The DDPM chain runs on `ddpm_timing_images` images only: timed and shown, not scored.
    """
    from lungkit.models.diffusion import DiffusionModel

    out_dir = Path(out_dir)
    image_size, channels, seed, n = config.image_size, config.channels, config.seed, config.n_generate
    c = config.diffusion
    conditional = _class_arguments(config, c)
    model = DiffusionModel(image_size=image_size, channels=channels, seed=seed,
                           **_diffusion_arguments(c), **conditional)
    entry = _train(model, c, train_x, train_y, out_dir, config, "diffusion")

    def sample(name, title, count, steps, sampler, repeats=None, warmup=None, **extra):
        """Generates, times and describes one sampler's images."""
        options = {}
        if config.conditional:
            options = {"label": balanced_labels(count), "guidance": c.guidance}
            title += f" (w={c.guidance:g})"
        images, timing = timed_generate(model.generate, count, config, repeats, warmup,
                                        steps=steps, sampler=sampler, seed=seed,
                                        progress=progress, **options)
        entry["variants"][name] = {"label": title, "steps": steps, **timing, **extra}
        if options:
            entry["variants"][name].update(_conditional_variant(options["label"]))
        return images

    ddim = sample("ddim", f"DDIM-{c.sampling_steps}", n, c.sampling_steps, "ddim")
    dpm = sample("dpm++", f"DPM-Solver++-{c.dpm_steps}", n, c.dpm_steps, "dpm++")
    # too few DDPM images for distribution metrics: timed and shown only
    ddpm = sample("ddpm", f"DDPM-{c.timesteps}", c.ddpm_timing_images, c.timesteps, "ddpm",
                  repeats=1, warmup=ddpm_warmup(model), evaluate=False)  # timed once
    return entry, {"ddim": ddim, "dpm++": dpm, "ddpm": ddpm}


def run_latent(config, train_x, train_y, out_dir, progress=True):
    """Trains the latent hybrid and samples it with DDIM.

    Stage 1 trains the autoencoder, stage 2 the diffusion on its latents.
    """
    from lungkit.models.latent import LatentAutoencoder, LatentDiffusion

    out_dir = Path(out_dir)
    image_size, channels, seed, n = config.image_size, config.channels, config.seed, config.n_generate
    c = config.latent
    autoencoder = LatentAutoencoder(image_size=image_size, channels=channels,
                                    latent_channels=c.latent_channels,
                                    widths=c.autoencoder_widths, kl_weight=c.kl_weight,
                                    seed=seed)
    stage1 = _train(autoencoder, c, train_x, train_y, out_dir / "autoencoder", config,
                    "autoencoder", epochs=c.autoencoder_epochs)
    scale_factor = autoencoder.compute_scale_factor(train_x)
    reconstructions = autoencoder.reconstruct(train_x[:n])
    conditional = _class_arguments(config, c)
    model = LatentDiffusion(autoencoder, seed=seed, **_diffusion_arguments(c), **conditional)
    entry = _train(model, c, train_x, train_y, out_dir / "diffusion", config,
                   "latent_diffusion", epochs=c.diffusion_epochs)
    stage1.pop("variants")
    entry["autoencoder"] = {
        **stage1, "latent_shape": list(autoencoder.latent_shape),
        "scale_factor": scale_factor, "shift_factor": autoencoder.shift_factor,
        "reconstruction_mae": float(np.mean(np.abs(reconstructions - train_x[:n]))),
    }
    options, title = {}, "Latent diffusion (hybrid)"
    if config.conditional:
        options = {"label": balanced_labels(n), "guidance": c.guidance}
        title += f" (w={c.guidance:g})"
    images, timing = timed_generate(model.generate, n, config, steps=c.sampling_steps,
                                    sampler="ddim", seed=seed, progress=progress, **options)
    entry["variants"]["latent"] = {"label": title, "steps": c.sampling_steps, **timing}
    if options:
        entry["variants"]["latent"].update(_conditional_variant(options["label"]))
    return entry, {"latent": images}


# registry name (lungkit.models.registry.MODELS) -> how the comparison trains and samples it
RUNNERS = {"vae": run_vae, "denoiser": run_denoiser, "diffusion": run_diffusion,
           "latent": run_latent}


def train_and_sample(model_name, config, train_x, train_y, out_dir, progress=True):
    """Trains one model of the comparison and generates its samples.

    The model is built, trained and sampled in `config.strategy`'s scope under the dtype
    policy `config.precision`; the global policy is restored afterwards.

    Returns `(entry, samples)`: the model's results dict (timings, history, one entry per
    sampling variant) and `{variant: float32 images in [0, 1]}`.
    """
    from lungkit import training

    if model_name not in RUNNERS:
        raise ValueError(f"`model_name` must be one of {tuple(RUNNERS)}. Received: {model_name!r}")
    strategy = training.get_strategy(config.strategy)
    previous = training.set_precision(config.precision)  # read by layers as they are built
    try:
        with strategy.scope():  # variables placed on every replica; `fit` follows the model
            return RUNNERS[model_name](config, train_x, train_y, out_dir, progress=progress)
    finally:
        training.set_precision(previous)
