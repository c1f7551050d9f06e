"""`LatentDiffusion`: a DDPM on the latents of a frozen `LatentAutoencoder` (the hybrid).

Rombach et al. (2022): train an autoencoder first (`lungkit.models.autoencoder`), freeze it,
then train a diffusion model on its standardised latents `(z - shift) * scale_factor`, and
generate by sampling a latent and decoding it once. The paper under study (Chen 2024) ends by
proposing such a VAE-diffusion hybrid for "both speed and image quality": each sampling step
runs the U-Net on a latent 2**downsamplings times smaller per side (16x16x4 for 128 px), so
DDIM-50 costs far less than in pixel space, while the autoencoder keeps the detail a VAE with
a 128-number latent loses.

The diffusion part is a `DiffusionModel` (schedule, EMA, DDPM / DDIM / DPM-Solver++ sampling,
classifier-free guidance) run on latents: it is trained through its `denoising_loss` hook
(data already in model space) and sampled with `clip_denoised=False` (latents are not in
[-1, 1]). One `.keras` file holds both parts: the autoencoder is a tracked sub-model.

Two ways to train:

1. Experiment style: train a `LatentAutoencoder`, call its `compute_scale_factor(images)`,
   then `LatentDiffusion(autoencoder, ...)`; `fit` trains the diffusion only.
2. In stages (`lungkit train latent`): `LatentDiffusion(image_size=..., autoencoder_epochs=N)`
   builds an untrained autoencoder and declares it as a pending stage (`pending_stages`):
   `lungkit.training.fit` trains it for N epochs (default: as many as the diffusion) as a run
   of its own (resumable, reused when finished), this model measures its scale factor, then
   the diffusion trains. Without lungkit's trainer, call `fit_autoencoder(x)` before `fit`.
   `lungkit.training.distributed_fit` (the multi-worker loop) runs no stages: there, pass a
   trained autoencoder.
"""

import logging

import keras
from keras import ops

from lungkit.models.autoencoder import (
    DEFAULT_AUTOENCODER_WIDTHS,
    DEFAULT_LATENT_CHANNELS,
    LatentAutoencoder,
)
from lungkit.models.base import GenerativeModel, TrainingStage
from lungkit.models.diffusion import DiffusionModel
from lungkit.models.unet import DEFAULT_BLOCK, LEGACY_BLOCK

logger = logging.getLogger(__name__)

DEFAULT_LATENT_WIDTHS = (64, 128, 256)  # the latent U-Net: 16x16 -> 8x8 -> 4x4 at 128 px


@keras.saving.register_keras_serializable(package="lungkit")
class LatentDiffusion(GenerativeModel):
    """Latent diffusion: a `DiffusionModel` on the latents of a frozen `LatentAutoencoder`.

    Args:
        autoencoder: a trained `LatentAutoencoder` (calibrated by `compute_scale_factor`), or
            None to build an untrained one from the next four arguments, trained by `fit`.
            It is frozen: made non-trainable, its optimizer (if compiled) dropped.
        image_size, channels, latent_channels, autoencoder_widths: the autoencoder to build
            when `autoencoder` is None (defaults 128, 3, 4, `DEFAULT_AUTOENCODER_WIDTHS`);
            with an `autoencoder` leave them None (or equal to its own).
        autoencoder_epochs: epochs of the first `fit` stage when the autoencoder is not
            calibrated; None = the `epochs` given to `fit`.
        timesteps, schedule, prediction, widths, blocks_per_level, attention_levels,
            ema_decay, num_classes, class_dropout, ema_warmup, loss_weighting, min_snr_gamma,
            block: the latent `DiffusionModel` (`widths` is its U-Net, which works at
            `latent_size`; configs saved without `block` load with the classic block).
        seed: seeds the diffusion's training and sampling noise (and a built autoencoder).

    Training batches: images float32 `(B, image_size, image_size, channels)` in [0, 1], or
    `(images, labels)` for a conditional model.
    """

    loss_names = ("loss",)

    def __init__(self, autoencoder=None, image_size=None, channels=None, latent_channels=None,
                 autoencoder_widths=None, autoencoder_epochs=None, timesteps=1000,
                 schedule="cosine", prediction="v", widths=DEFAULT_LATENT_WIDTHS,
                 blocks_per_level=2, attention_levels=(), ema_decay=0.999, num_classes=None,
                 class_dropout=0.1, seed=None, ema_warmup=True, loss_weighting="none",
                 min_snr_gamma=5.0, block=DEFAULT_BLOCK, **kwargs):
        shape_args = {"image_size": image_size, "channels": channels,
                      "latent_channels": latent_channels, "widths": autoencoder_widths}
        if autoencoder is None:
            autoencoder = LatentAutoencoder(
                image_size=image_size or 128, channels=channels or 3,
                latent_channels=latent_channels or DEFAULT_LATENT_CHANNELS,
                widths=autoencoder_widths or DEFAULT_AUTOENCODER_WIDTHS, seed=seed)
        elif not isinstance(autoencoder, LatentAutoencoder):
            raise TypeError(f"`autoencoder` must be a LatentAutoencoder or None. "
                            f"Received: autoencoder of type {type(autoencoder).__name__}")
        else:
            for name, value in shape_args.items():
                own = getattr(autoencoder, name)
                if value is not None and tuple(value if name == "widths" else [value]) != \
                        tuple(own if name == "widths" else [own]):
                    raise ValueError(f"`{'autoencoder_widths' if name == 'widths' else name}` "
                                     f"must be None or the autoencoder's {own!r} when an "
                                     f"autoencoder is given. Received: {value!r}")
        if autoencoder_epochs is not None and (isinstance(autoencoder_epochs, bool) or not
                                               isinstance(autoencoder_epochs, int)
                                               or autoencoder_epochs < 0):
            raise ValueError(f"`autoencoder_epochs` must be None or an integer >= 0. "
                             f"Received: autoencoder_epochs={autoencoder_epochs!r}")
        super().__init__(**kwargs)
        self.autoencoder = freeze_submodel(autoencoder)  # `fit` unfreezes it for its own stage only
        self.autoencoder_epochs, self.seed = autoencoder_epochs, seed
        self.diffusion = DiffusionModel(
            image_size=autoencoder.latent_size, channels=autoencoder.latent_channels,
            timesteps=timesteps, schedule=schedule, prediction=prediction, widths=widths,
            blocks_per_level=blocks_per_level, attention_levels=attention_levels,
            ema_decay=ema_decay, num_classes=num_classes, class_dropout=class_dropout,
            seed=seed, ema_warmup=ema_warmup, loss_weighting=loss_weighting,
            min_snr_gamma=min_snr_gamma, block=block, name="latent_diffusion_model")
        self.num_classes = num_classes  # read by the experiment (labelled batches or not)
        self.autoencoder_history = {}
        self.built = True
        logger.info("LatentDiffusion: %d px -> latent %s, autoencoder %s, denoiser %s parameters",
                    autoencoder.image_size, autoencoder.latent_shape,
                    f"{autoencoder.count_params():,}", f"{self.diffusion.network.count_params():,}")

    # -- shape facts ---------------------------------------------------------------------
    @property
    def image_size(self):
        return self.autoencoder.image_size

    @property
    def channels(self):
        return self.autoencoder.channels

    @property
    def timesteps(self):
        return self.diffusion.timesteps

    # -- training ------------------------------------------------------------------------
    def call(self, images, training=False):
        """The denoiser's output on the latents of `images` at t = 0 (builds the model)."""
        latents = self.autoencoder.to_latents(images, sample=False)
        batch = ops.shape(latents)[0]
        inputs = [latents, ops.zeros((batch,))]
        if self.num_classes is not None:
            inputs.append(ops.full((batch,), self.num_classes, dtype="int32"))
        return self.diffusion(inputs, training=training)

    def compute_losses(self, images, labels=None, training=False):
        """The diffusion loss on posterior samples of the frozen encoder.

        Args:
            images: float `(B, H, W, C)` in [0, 1].
            labels: int `(B,)` or None.

        Returns:
            `(loss,)`, a float32 scalar.
        """
        if training and not self.autoencoder.calibrated:
            raise ValueError("The autoencoder is not trained and calibrated: call "
                             "`fit_autoencoder(x)` first, or train with lungkit.training.fit, "
                             "which runs that stage itself.")
        latents = ops.stop_gradient(self.autoencoder.to_latents(images, sample=True))
        return (self.diffusion.denoising_loss(latents, labels, training),)

    def after_train_step(self):
        # the EMA update, counted by this model's optimizer (the diffusion has none)
        self.diffusion.after_train_step(self.optimizer.iterations - 1)

    def pending_stages(self):
        """The autoencoder, while it is not calibrated: `lungkit.training.fit` trains it first."""
        if self.autoencoder.calibrated:
            return []
        return [TrainingStage("autoencoder", self.autoencoder, self.autoencoder_epochs,
                              start=self._unfreeze_autoencoder, finish=self._finish_autoencoder)]

    def restore_stages(self):
        """A restored backup or finished run holds the trained, calibrated autoencoder."""
        self.autoencoder.calibrated = True

    def fit_autoencoder(self, x, epochs=None, optimizer=None, **fit_kwargs):
        """Trains the autoencoder on `x` with Keras' `fit`, then measures its scale factor.

        The first stage of `lungkit train latent`, for use without `lungkit.training` (which
        runs it through `pending_stages`, resumably, in a run folder of its own).

        Args:
            x: images in [0, 1] (array or `tf.data.Dataset`, optionally with labels).
            epochs: default `autoencoder_epochs` (or 1 when that is None).
            optimizer: default a fresh copy of the model's compiled optimizer.
            **fit_kwargs: passed to `keras.Model.fit`.

        Returns:
            The Keras `History` of the autoencoder's training.
        """
        if optimizer is None:
            compiled = getattr(self.optimizer, "inner_optimizer", self.optimizer)
            if compiled is None:
                raise ValueError("`optimizer` is required when the model is not compiled.")
            with self.distribute_strategy.scope():
                optimizer = type(compiled).from_config(compiled.get_config())
        self._unfreeze_autoencoder()
        try:
            self.autoencoder.compile(optimizer=optimizer)
            history = self.autoencoder.fit(x, epochs=epochs or self.autoencoder_epochs or 1,
                                           **fit_kwargs)
        except BaseException:
            self._finish_autoencoder(None)
            raise
        self._finish_autoencoder(x)
        self.autoencoder_history = {k: [float(v) for v in values]
                                    for k, values in history.history.items()}
        return history

    def _unfreeze_autoencoder(self):
        self.autoencoder.trainable = True

    def _finish_autoencoder(self, data):
        """Freezes the autoencoder again and, after a finished training on `data`, measures
        its scale factor (`data` None: the training failed, nothing is measured)."""
        freeze_submodel(self.autoencoder)
        if data is not None:
            self.autoencoder.compute_scale_factor(data)

    # -- sampling ------------------------------------------------------------------------
    def generate(self, n, *, steps=50, sampler="ddim", eta=0.0, seed=None, label=None,
                 guidance=None, spacing=None, batch_size=32, progress=True, use_ema=True):
        """Samples latents with the diffusion model and decodes them.

        Args:
            n, steps, sampler, eta, seed, label, guidance, spacing, batch_size, progress,
                use_ema: as in `DiffusionModel.generate` ("ddim", "ddpm" or "dpm++";
                `label`/`guidance` need `num_classes`). `pred_x0` is not clipped: latents
                are unbounded.

        Returns:
            float32 `(n, image_size, image_size, channels)` in [0, 1].
        """
        latents = self.diffusion.sample(n, steps=steps, sampler=sampler, eta=eta, seed=seed,
                                        label=label, guidance=guidance, spacing=spacing,
                                        batch_size=batch_size, progress=progress,
                                        use_ema=use_ema, clip_denoised=False)
        images = [ops.convert_to_numpy(self.autoencoder.from_latents(latents[i:i + batch_size]))
                  for i in range(0, len(latents), batch_size)]
        return ops.convert_to_numpy(ops.clip(ops.concatenate(images), 0.0, 1.0)).astype("float32")

    # -- serialisation -------------------------------------------------------------------
    def get_config(self):
        d = self.diffusion
        return {**super().get_config(),
                "autoencoder": keras.saving.serialize_keras_object(self.autoencoder),
                "autoencoder_epochs": self.autoencoder_epochs, "timesteps": d.timesteps,
                "schedule": d.schedule_name, "prediction": d.prediction, "widths": list(d.widths),
                "blocks_per_level": d.blocks_per_level,
                "attention_levels": list(d.attention_levels), "ema_decay": d.ema_decay,
                "num_classes": d.num_classes, "class_dropout": d.class_dropout,
                "seed": self.seed, "ema_warmup": d.ema_warmup,
                "loss_weighting": d.loss_weighting, "min_snr_gamma": d.min_snr_gamma,
                "block": d.block}

    @classmethod
    def from_config(cls, config):
        # old configs (before the recipe options) load as they were trained: no EMA warm-up
        config = {"ema_warmup": False, "loss_weighting": "none", "block": LEGACY_BLOCK,
                  **config}
        if isinstance(config.get("autoencoder"), dict):
            config["autoencoder"] = keras.saving.deserialize_keras_object(config["autoencoder"])
        return cls(**config)


def freeze_submodel(autoencoder):
    """Makes a sub-model (an autoencoder, a distillation teacher) non-trainable and drops its
    compiled state (optimizer); returns it.

    A compiled sub-model would be saved with its own optimizer, which the reloaded (frozen,
    uncompiled) sub-model cannot take back; it is not trained again, so it needs none.
    """
    # Through the property's setter: `autoencoder.trainable = False` does nothing when the
    # flag is False already (an autoencoder rebuilt from its config), which would leave its
    # sub-layers trainable.
    keras.layers.Layer.trainable.fset(autoencoder, False)
    autoencoder.optimizer = None
    autoencoder.compiled = False
    return autoencoder
