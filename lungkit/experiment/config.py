"""The comparison's settings: frozen dataclasses, one section per model, and the presets.

`ExperimentConfig` holds the experiment (data, size, sample count, strategy, precision,
conditioning) and one section per model (`VAEConfig`, `DenoiserConfig`, `DiffusionConfig`,
`LatentConfig`); `PRESETS` names the standard ones: "quick" (minutes on two CPU cores, what
`make demo` runs), "classes" (class-conditional models at 64 px) and "paper" (Chen 2024:
128 px, VAE 200 epochs, denoiser 10 epochs). `get_config(preset, **overrides)` returns one
with fields changed (`"vae.epochs": 5` reaches inside a section). TensorFlow-free.
"""

import dataclasses

from lungkit.checks import (
    FEATURE_CHOICES,
    PRECISIONS,
    STRATEGIES,
    check_channels,
    check_int,
    check_optional_int,
)
from lungkit.models.registry import MODELS

MODEL_NAMES = tuple(MODELS)  # the registry's names, in its order
# compare runs on one machine: every strategy but multi-worker
COMPARE_STRATEGIES = tuple(s for s in STRATEGIES if s != "multiworker")


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    epochs: int = 200  # the paper trains 200 epochs
    batch_size: int = 32
    learning_rate: float = 1e-3  # Adam's Keras default, as the paper's code
    latent_dim: int = 128
    widths: tuple = (32, 64, 128, 256)
    beta: float = 1.0  # KL weight
    class_dropout: float = 0.1  # conditional runs: share of labels dropped in training
    # "transpose": the paper's transposed convolutions (a checkerboard in the samples);
    # "resize": nearest resize + convolution (lungkit.models.vae_layers.DECODERS)
    decoder: str = "transpose"


@dataclasses.dataclass(frozen=True)
class DenoiserConfig:
    epochs: int = 10  # the paper trains its denoiser 10 epochs
    batch_size: int = 16
    learning_rate: float = 5e-4  # at 2e-3 the full-width denoiser stalls at the identity map
    widths: tuple = (32, 64, 128)
    noise_std: float = 0.1  # std of the Gaussian noise added to [0, 1] images


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    epochs: int = 100
    batch_size: int = 16
    learning_rate: float = 2e-4  # Ho et al. (2020)
    widths: tuple = (32, 64, 96, 128)
    blocks_per_level: int = 2
    attention_levels: tuple = ()
    timesteps: int = 1000  # Ho et al. (2020)
    schedule: str = "cosine"  # Nichol & Dhariwal (2021)
    # v (Salimans & Ho, 2022), not Ho et al.'s epsilon: near t = T the cosine schedule keeps
    # sqrt(alpha_bar) ~ 0.03 of the slice, so x0 = (x_t - sqrt(1 - alpha_bar) eps) / 0.03
    # multiplies every error in eps ~30x (epsilon samples had grey backgrounds: results.md).
    prediction: str = "v"
    ema_decay: float = 0.999
    sampling_steps: int = 50  # DDIM steps for the report's samples
    dpm_steps: int = 20  # DPM-Solver++(2M) steps: Lu et al. (2022) report 15-20 suffice
    class_dropout: float = 0.1  # conditional runs: Ho & Salimans (2022) use 0.1-0.2
    guidance: float = 2.0  # conditional runs: classifier-free guidance w of the samples
    ddpm_timing_images: int = 2  # DDPM-1000 is timed on this many images only


@dataclasses.dataclass(frozen=True)
class LatentConfig:
    autoencoder_epochs: int = 50  # stage 1: the autoencoder
    diffusion_epochs: int = 100  # stage 2: the diffusion on its frozen latents
    batch_size: int = 16
    learning_rate: float = 2e-4  # both stages; Ho et al. (2020) for the diffusion
    latent_channels: int = 4  # Rombach et al. (2022): KL autoencoder f=8, 4 channels
    # One width per resolution level: 3 downsamplings, 128 px -> a 16x16x4 latent.
    autoencoder_widths: tuple = (32, 64, 128, 128)
    kl_weight: float = 1e-6  # Rombach et al. (2022), against a per-image summed L1 loss
    widths: tuple = (64, 128, 256)  # the latent U-Net: 16x16 -> 8x8 -> 4x4
    blocks_per_level: int = 2
    attention_levels: tuple = ()
    timesteps: int = 1000  # Ho et al. (2020)
    schedule: str = "cosine"  # Nichol & Dhariwal (2021)
    prediction: str = "v"  # as the pixel DDPM's (Rombach et al. 2022 used epsilon)
    ema_decay: float = 0.999
    sampling_steps: int = 50  # DDIM steps, as the pixel-space diffusion's
    class_dropout: float = 0.1  # conditional runs: as the pixel-space diffusion's
    guidance: float = 2.0  # conditional runs: classifier-free guidance w of the samples


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str = "compare"
    data_dir: str | None = None  # None: the built-in phantom set (written to <out_dir>/data)
    image_size: int = 128  # the paper's size
    channels: int = 3  # the paper loads RGB; 1 holds a third of the data and loses nothing on CT
    test_fraction: float = 0.2  # held out for FID/KID; split by file, not by patient
    # share of all slices set aside for the domain encoder (FID/KID features): no generator
    # trains on them and no metric scores against them; 0 leaves the domain encoder out
    encoder_fraction: float = 0.15
    limit: int | None = None  # at most this many images per class
    phantom_per_class: int = 40
    seed: int = 0
    n_generate: int = 64  # samples per model for the metrics
    # Generation speed: every model timed `timing_repeats` times on one batch of
    # `timing_images` (one shape for all, warmed up first); the claims use the runs' spread.
    timing_images: int = 16
    timing_repeats: int = 3
    models: tuple = ("vae", "denoiser", "diffusion")
    # FID/KID feature spaces (lungkit.evaluation.extractors): "auto" = the training-free
    # random CNN and texture features, the domain encoder, and InceptionV3 when its weights
    # are on disk; "inception" = the same but InceptionV3 required; "domain" = never InceptionV3
    features: str = "auto"
    strategy: str = "auto"  # tf.distribute strategy every model is built and trained under
    precision: str = "float32"  # Keras dtype policy of every model
    conditional: bool = False  # class-conditional VAE, DDPM and hybrid, scored for fidelity
    # The class-fidelity judge: `classifier_members` CNNs (probabilities averaged), each
    # trained `classifier_steps` optimizer steps on the real training split.
    classifier_steps: int = 3000
    classifier_members: int = 1
    tstr_steps: int = 500  # each train-on-synthetic classifier's (one per conditional sampler)
    vae: VAEConfig = VAEConfig()
    denoiser: DenoiserConfig = DenoiserConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    latent: LatentConfig = LatentConfig()

    def __post_init__(self):
        unknown = [m for m in self.models if m not in MODEL_NAMES]
        if unknown:
            raise ValueError(f"`models` must be a subset of {MODEL_NAMES}. Received: {unknown}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(
                f"`test_fraction` must be in (0, 1). Received: test_fraction={self.test_fraction}"
            )
        if not 0.0 <= self.encoder_fraction < 1.0 - self.test_fraction:
            raise ValueError(f"`encoder_fraction` must be in [0, 1 - test_fraction). Received: "
                             f"encoder_fraction={self.encoder_fraction}, "
                             f"test_fraction={self.test_fraction}")
        if self.features not in FEATURE_CHOICES:
            raise ValueError(f"`features` must be one of {FEATURE_CHOICES}. "
                             f"Received: features={self.features!r}")
        check_channels(self.channels)
        for field in ("image_size", "classifier_steps", "classifier_members", "tstr_steps",
                      "phantom_per_class", "timing_images", "timing_repeats"):
            check_int(field, getattr(self, field))
        check_int("n_generate", self.n_generate, low=2)
        check_optional_int("limit", self.limit)
        if self.strategy not in COMPARE_STRATEGIES:
            raise ValueError(
                f"`strategy` must be one of {COMPARE_STRATEGIES} (compare runs on one machine; "
                f"`lungkit train --strategy multiworker` trains across several). "
                f"Received: strategy={self.strategy!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"`precision` must be one of {PRECISIONS}. "
                             f"Received: precision={self.precision!r}")

    def to_dict(self):
        return dataclasses.asdict(self)

    def replace(self, **changes):
        """A copy with top-level fields or nested ones (`"vae.epochs"`) changed."""
        nested = {}
        top = {}
        for key, value in changes.items():
            if "." in key:
                section, field = key.split(".", 1)
                nested.setdefault(section, {})[field] = value
            else:
                top[key] = value
        for section, fields in nested.items():
            if section not in ("vae", "denoiser", "diffusion", "latent"):
                raise ValueError(f"Unknown config section {section!r} in {list(fields)}.")
            top[section] = dataclasses.replace(getattr(self, section), **fields)
        return dataclasses.replace(self, **top)


PRESETS = {
    # What `make demo` runs: under 10 minutes on 2 CPU cores, at 64 px where the phantom's
    # anatomy (body wall, lungs, vessels, spine, table) is visible; all four models, one
    # channel. Most of the budget goes to the DDPM (800 optimizer updates: its DDIM samples
    # are clean slices from about 600 on); the VAE's decoder is the resize-convolution one,
    # without the transposed convolutions' checkerboard. Not conditional (the "classes"
    # preset measures class fidelity). Measured runs: docs/results.md.
    "quick": ExperimentConfig(
        name="quick",
        image_size=64,
        channels=1,
        phantom_per_class=48,
        n_generate=48,
        timing_images=8,
        models=("vae", "denoiser", "diffusion", "latent"),
        vae=VAEConfig(epochs=40, batch_size=16, latent_dim=64, widths=(16, 32, 64, 128),
                      beta=0.25, decoder="resize"),
        denoiser=DenoiserConfig(epochs=3, batch_size=16, widths=(16, 32, 64)),
        diffusion=DiffusionConfig(
            epochs=90, batch_size=16, learning_rate=1e-3, widths=(16, 32, 64),
            blocks_per_level=1, ema_decay=0.995, sampling_steps=25, ddpm_timing_images=1,
        ),
        latent=LatentConfig(
            autoencoder_epochs=20, diffusion_epochs=50, learning_rate=1e-3,
            autoencoder_widths=(16, 32, 32), widths=(32, 64), blocks_per_level=1,
            ema_decay=0.995, sampling_steps=25,  # 64 px -> a 16x16x4 latent
        ),
    ),
    # Class conditioning on the phantom, hours on 2 CPU cores: 64 px, where the malignant
    # masses span 3-9 px; 900 slices; all four models; 900 samples per model (300 per class)
    # so that a small excess over chance is significant; a judge of 3 classifiers (one
    # classifier's accuracy depends on its seed). Measured runs: docs/results.md.
    "classes": ExperimentConfig(
        name="classes",
        image_size=64,
        channels=1,
        phantom_per_class=300,
        n_generate=900,
        conditional=True,
        models=("vae", "denoiser", "diffusion", "latent"),
        classifier_steps=4000,
        classifier_members=3,
        tstr_steps=400,
        vae=VAEConfig(epochs=150, batch_size=32, latent_dim=64, widths=(16, 32, 64, 128),
                      beta=0.25),
        denoiser=DenoiserConfig(epochs=3, batch_size=32, widths=(16, 32, 64)),
        diffusion=DiffusionConfig(
            epochs=120, batch_size=32, learning_rate=1e-3, widths=(16, 32, 64),
            blocks_per_level=1, ema_decay=0.995, ddpm_timing_images=1, guidance=3.0,
        ),
        latent=LatentConfig(
            autoencoder_epochs=60, diffusion_epochs=400, batch_size=32, learning_rate=1e-3,
            autoencoder_widths=(16, 32, 32), widths=(32, 64), blocks_per_level=1,
            ema_decay=0.995, guidance=5.0,  # 64 px -> a 16x16x4 latent
        ),
    ),
    # Chen (2024): 128x128 RGB, VAE 200 epochs with Adam, denoiser 10 epochs.
    "paper": ExperimentConfig(name="paper"),
}


def get_config(preset="quick", **overrides):
    """Returns the named preset with `overrides` applied (`"vae.epochs": 5` reaches inside)."""
    if preset not in PRESETS:
        raise ValueError(f"`preset` must be one of {sorted(PRESETS)}. Received: {preset!r}")
    return PRESETS[preset].replace(**overrides) if overrides else PRESETS[preset]
