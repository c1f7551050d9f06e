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
2. One call (`lungkit train latent`): `LatentDiffusion(image_size=..., autoencoder_epochs=N)`
   builds an untrained autoencoder; the first `fit` trains it for N epochs (default: as many
   as the diffusion), measures its scale factor, then trains the diffusion. A run resumed from
   a `BackupAndRestore` backup skips the first stage (the backup holds the autoencoder); a
   run killed during the first stage repeats it. `lungkit.training.distributed_fit` (the
   multi-worker loop) does not call `fit`: there, pass a trained autoencoder.
"""

import logging
from pathlib import Path

import keras
from keras import ops

from lungkit.models.autoencoder import (  # noqa: F401  (LatentAutoencoder re-exported)
    DEFAULT_AUTOENCODER_WIDTHS,
    DEFAULT_LATENT_CHANNELS,
    LatentAutoencoder,
)
from lungkit.models.base import GenerativeModel
from lungkit.models.diffusion import DiffusionModel

logger = logging.getLogger(__name__)

DEFAULT_LATENT_WIDTHS = (64, 128, 256)  # the latent U-Net: 16x16 -> 8x8 -> 4x4 at 128 px
# Where keras.callbacks.BackupAndRestore writes its epoch counter (a resumable run).
BACKUP_METADATA = "training_metadata.json"


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
            ema_decay, num_classes, class_dropout: the latent `DiffusionModel` (`widths` is
            its U-Net, which works at `latent_size`).
        seed: seeds the diffusion's training and sampling noise (and a built autoencoder).

    Training batches: images float32 `(B, image_size, image_size, channels)` in [0, 1], or
    `(images, labels)` for a conditional model.
    """

    loss_names = ("loss",)

    def __init__(self, autoencoder=None, image_size=None, channels=None, latent_channels=None,
                 autoencoder_widths=None, autoencoder_epochs=None, timesteps=1000,
                 schedule="cosine", prediction="epsilon", widths=DEFAULT_LATENT_WIDTHS,
                 blocks_per_level=2, attention_levels=(), ema_decay=0.999, num_classes=None,
                 class_dropout=0.1, seed=None, **kwargs):
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
        self.autoencoder = _frozen(autoencoder)  # `fit` unfreezes it for its own stage only
        self.autoencoder_epochs, self.seed = autoencoder_epochs, seed
        self.diffusion = DiffusionModel(
            image_size=autoencoder.latent_size, channels=autoencoder.latent_channels,
            timesteps=timesteps, schedule=schedule, prediction=prediction, widths=widths,
            blocks_per_level=blocks_per_level, attention_levels=attention_levels,
            ema_decay=ema_decay, num_classes=num_classes, class_dropout=class_dropout,
            seed=seed, name="latent_diffusion_model")
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
        latents = ops.stop_gradient(self.autoencoder.to_latents(images, sample=True))
        return (self.diffusion.denoising_loss(latents, labels, training),)

    def after_train_step(self):
        self.diffusion.after_train_step()  # the EMA update

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            **kwargs):
        """`keras.Model.fit` for the diffusion, after training the autoencoder if needed.

        When the autoencoder is not calibrated and no backup of an interrupted run is found
        among `callbacks`, it is first trained on `x` for `autoencoder_epochs` (default
        `epochs`) with a fresh copy of the compiled optimizer, then its `scale_factor` is measured
        on `x`. Its losses per epoch go to `autoencoder_history`.
        """
        if not self.autoencoder.calibrated and not _resuming(callbacks):
            self._fit_autoencoder(x, y, batch_size, epochs, verbose, kwargs.get("shuffle", True),
                                  kwargs.get("steps_per_epoch"))
        history = super().fit(x, y, batch_size=batch_size, epochs=epochs, verbose=verbose,
                              callbacks=callbacks, **kwargs)
        # Trained here, or restored with its scale factor from the backup.
        self.autoencoder.calibrated = True
        return history

    def _fit_autoencoder(self, x, y, batch_size, epochs, verbose, shuffle, steps_per_epoch):
        autoencoder = self.autoencoder
        ae_epochs = epochs if self.autoencoder_epochs is None else self.autoencoder_epochs
        # A fresh copy of the compiled optimizer (its inner one under mixed precision, which
        # the autoencoder's compile wraps again), made in the model's strategy scope.
        optimizer = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        with self.distribute_strategy.scope():
            optimizer = type(optimizer).from_config(optimizer.get_config())
        logger.info("Stage 1: training the autoencoder for %d epochs", ae_epochs)
        autoencoder.trainable = True
        try:
            autoencoder.compile(optimizer=optimizer)
            history = autoencoder.fit(x, y, batch_size=batch_size, epochs=ae_epochs,
                                      verbose=verbose, shuffle=shuffle,
                                      steps_per_epoch=steps_per_epoch)
        finally:
            _frozen(autoencoder)
        self.autoencoder_history = {k: [float(v) for v in values]
                                    for k, values in history.history.items()}
        autoencoder.compute_scale_factor(x)
        logger.info("Stage 2: training the latent diffusion")

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
                "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("autoencoder"), dict):
            config["autoencoder"] = keras.saving.deserialize_keras_object(config["autoencoder"])
        return cls(**config)


def _frozen(autoencoder):
    """Makes `autoencoder` non-trainable and drops its compiled state (optimizer).

    A compiled sub-model would be saved with its own optimizer, which the reloaded (frozen,
    uncompiled) autoencoder cannot take back; it is not trained again, so it needs none.
    """
    # Through the property's setter: `autoencoder.trainable = False` does nothing when the
    # flag is False already (an autoencoder rebuilt from its config), which would leave its
    # sub-layers trainable.
    keras.layers.Layer.trainable.fset(autoencoder, False)
    autoencoder.optimizer = None
    autoencoder.compiled = False
    return autoencoder


def _resuming(callbacks):
    """True when a `BackupAndRestore` in `callbacks` holds the backup of an unfinished run."""
    return any(isinstance(callback, keras.callbacks.BackupAndRestore)
               and (Path(callback.backup_dir) / BACKUP_METADATA).exists()
               for callback in callbacks or ())
