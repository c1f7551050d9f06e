"""`DiffusionModel`: a pixel-space DDPM with EMA weights and DDPM / DDIM / DPM-Solver++ sampling.

Training follows Ho et al. (2020): a random timestep per image, Gaussian noise, and the MSE of
the network's noise (or v, Salimans & Ho 2022) prediction. Sampling runs one compiled step
function (a predict step, then an update step) in a Python loop over a `SamplingPlan`; the
plans, update rule, notation table and references live in `lungkit.models.schedule`.
`sample_progressive` yields every step of that loop; `sample` and `generate` keep the last.
Classifier-free guidance follows Ho & Salimans (2022), with `guidance` = w in

    eps = eps_uncond + w * (eps_cond - eps_uncond),

so w = 0 is unconditional sampling, w = 1 conditional sampling, w > 1 guided sampling.

Images are in [-1, 1] inside the model and float32 [0, 1] at its public boundary.
"""

import logging

import keras
import numpy as np
import tensorflow as tf  # tf.function only (the compiled sampling step)
from keras import ops
from tqdm.auto import tqdm

from lungkit.checks import check_choice, check_int, check_number, check_optional_int, check_seed
from lungkit.models.base import GenerativeModel, ReplicaSeeds
from lungkit.models.recipe import LOSS_WEIGHTINGS, denoising_mse, ema_decay_at, update_ema
from lungkit.models.sampling import SamplingStep, StepOptions, sampling_labels
from lungkit.models.schedule import (
    PREDICTIONS,
    NoiseSchedule,
    StepCoefficients,
    denoising_update,
    eps_from_velocity,
    velocity,
    x0_from_eps,
    x0_from_velocity,
)
from lungkit.models.unet import BLOCKS, DEFAULT_BLOCK, LEGACY_BLOCK, build_unet

logger = logging.getLogger(__name__)


@keras.saving.register_keras_serializable(package="lungkit")
class DiffusionModel(GenerativeModel):
    """A pixel-space DDPM with EMA weights, sampled by DDPM, DDIM or DPM-Solver++(2M).

    Args:
        image_size: height and width of the images.
        channels: image channels (1 or 3 for CT).
        timesteps: T, the number of diffusion steps.
        schedule: a key of `lungkit.models.schedule.SCHEDULES` ("cosine" or "linear").
        prediction: what the network predicts: "epsilon" (Ho et al.) or "v" (Salimans & Ho).
        widths, blocks_per_level, attention_levels, block: the U-Net (`build_unet`);
            `block` "fast" (default) or "classic" (configs saved without it).
        ema_decay: decay of the exponential moving average of the weights, in [0, 1).
        ema_warmup: use min(ema_decay, (1 + t) / (10 + t)) at update t (diffusers' EMAModel),
            so a short run's EMA is not mostly the initial weights (`models.recipe`).
        loss_weighting: "none" (plain MSE) or "min_snr" (Hang et al. 2023, weights
            min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v; `models.recipe`).
        min_snr_gamma: gamma of "min_snr" (> 0; the paper's 5).
        num_classes: None for an unconditional model; else the number of classes, and the
            network gets a `labels` input (index `num_classes` = no label).
        class_dropout: probability, in training, of replacing a label by "no label", which
            teaches the unconditional model used by classifier-free guidance.
        seed: seed of the training noise and timesteps.

    Training batches are images float32 `(B, image_size, image_size, channels)` in [0, 1], or
    `(images, labels)` with int labels `(B,)`; the loss is the MSE of the prediction.
    """

    loss_names = ("loss",)

    def __init__(self, image_size=64, channels=3, timesteps=1000, schedule="cosine",
                 prediction="v", widths=(32, 64, 96, 128), blocks_per_level=2,
                 attention_levels=(), ema_decay=0.999, num_classes=None, class_dropout=0.1,
                 seed=None, ema_warmup=True, loss_weighting="none", min_snr_gamma=5.0,
                 block=DEFAULT_BLOCK, **kwargs):
        check_choice("prediction", prediction, PREDICTIONS)
        check_choice("loss_weighting", loss_weighting, LOSS_WEIGHTINGS)
        check_choice("block", block, BLOCKS)
        min_snr_gamma = check_number("min_snr_gamma", min_snr_gamma, 0.0, None, low_open=True)
        ema_decay = check_number("ema_decay", ema_decay, 0.0, 1.0, high_open=True)
        class_dropout = check_number("class_dropout", class_dropout, 0.0, 1.0, high_open=True)
        num_classes = check_optional_int("num_classes", num_classes)
        seed = check_seed("seed", seed)
        schedule_object = NoiseSchedule(schedule, timesteps)  # validates both
        super().__init__(**kwargs)
        self.image_size, self.channels, self.prediction = image_size, channels, prediction
        self.timesteps, self.schedule_name = int(timesteps), schedule
        self.widths, self.blocks_per_level = tuple(widths), blocks_per_level
        self.attention_levels, self.block = tuple(attention_levels), block
        self.ema_decay, self.num_classes, self.class_dropout = ema_decay, num_classes, class_dropout
        self.seed, self.ema_warmup = seed, bool(ema_warmup)
        self.loss_weighting, self.min_snr_gamma = loss_weighting, min_snr_gamma
        self.schedule = schedule_object
        unet_args = dict(image_size=image_size, channels=channels, widths=self.widths,
                         blocks_per_level=blocks_per_level,
                         attention_levels=self.attention_levels, time_embedding=True,
                         num_classes=num_classes, block=block)
        self.network = build_unet(**unet_args, name="network")
        self.ema_network = build_unet(**unet_args, name="ema_network")
        self.ema_network.set_weights(self.network.get_weights())
        self.ema_network.trainable = False  # updated by after_train_step, not the optimizer
        self.seed_generator = keras.random.SeedGenerator(seed)
        # Its own stream for sampling, so generate() does not shift the training noise; the
        # compiled step draws its noise from it, and generate(seed=s) resets it to s.
        self.sampling_seeds = keras.random.SeedGenerator(
            None if seed is None else seed + 1, name="sampling_seeds")
        self._alphas_cumprod = self.schedule.alphas_cumprod.astype("float32")
        self._compiled_step = None
        self.built = True

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size, "channels": self.channels,
                "timesteps": self.timesteps, "schedule": self.schedule_name,
                "prediction": self.prediction, "widths": self.widths,
                "blocks_per_level": self.blocks_per_level,
                "attention_levels": self.attention_levels, "ema_decay": self.ema_decay,
                "num_classes": self.num_classes, "class_dropout": self.class_dropout,
                "seed": self.seed, "ema_warmup": self.ema_warmup,
                "loss_weighting": self.loss_weighting, "min_snr_gamma": self.min_snr_gamma,
                "block": self.block}

    @classmethod
    def from_config(cls, config):
        """Old configs load as they were trained: no EMA warm-up, the classic U-Net block."""
        return cls(**{"ema_warmup": False, "loss_weighting": "none", "block": LEGACY_BLOCK,
                      **config})

    # -- training -----------------------------------------------------------------------
    def call(self, inputs, training=False):
        """The online network's eps (or v) prediction.

        Args:
            inputs: `[x_t, t / T, labels?]` with `x_t` in model space [-1, 1], as the network
                takes them; or images alone in [0, 1], read as `x_t` at t = 0 with no label
                (what `fit()` passes when it builds the model under a distribution strategy).
        """
        if not isinstance(inputs, (list, tuple)):
            x = ops.cast(inputs, "float32") * 2.0 - 1.0
            batch = ops.shape(x)[0]
            inputs = [x, ops.zeros((batch,))]
            if self.num_classes is not None:
                inputs.append(self._labels(None, batch, training=False))
        return self.network(inputs, training=training)

    def _labels(self, labels, batch, training):
        null = ops.full((batch,), self.num_classes, dtype="int32")
        if labels is None:
            return null
        labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
        if training and self.class_dropout > 0:
            dropped = keras.random.uniform((batch,), seed=ReplicaSeeds(self.seed_generator)) \
                < self.class_dropout
            labels = ops.where(dropped, null, labels)
        return labels

    def compute_losses(self, images, labels=None, training=False):
        """MSE between the network's prediction and its target at a random timestep.

        Args:
            images: float `(B, H, W, C)` in [0, 1].
            labels: int `(B,)` or None (unconditional).

        Returns:
            `(loss,)`, a float32 scalar.
        """
        return (self.denoising_loss(ops.cast(images, "float32") * 2.0 - 1.0, labels, training),)

    def denoising_loss(self, x0, labels=None, training=False):
        """The loss of `compute_losses` on data already in model space (no [0, 1] mapping).

        The hook for data that is not an image in [0, 1], e.g. `LatentDiffusion`'s
        unit-variance latents (`lungkit.models.latent`), sampled back with
        `sample(..., clip_denoised=False)`.

        Args:
            x0: float `(B, image_size, image_size, channels)`, the clean data.
            labels: int `(B,)` or None (unconditional).

        Returns:
            A float32 scalar.
        """
        x0 = ops.cast(x0, "float32")
        batch = ops.shape(x0)[0]
        seeds = ReplicaSeeds(self.seed_generator)  # each replica its own timesteps and noise
        t = keras.random.randint((batch,), 0, self.timesteps, seed=seeds)
        noise = keras.random.normal(ops.shape(x0), seed=seeds)
        alpha_bar = ops.reshape(ops.take(ops.convert_to_tensor(self._alphas_cumprod), t),
                                (-1, 1, 1, 1))
        signal_rate, noise_rate = ops.sqrt(alpha_bar), ops.sqrt(1.0 - alpha_bar)
        noisy = signal_rate * x0 + noise_rate * noise
        target = noise if self.prediction == "epsilon" else \
            velocity(x0, noise, signal_rate, noise_rate)
        inputs = [noisy, ops.cast(t, "float32") / float(self.timesteps)]
        if self.num_classes is not None:
            inputs.append(self._labels(labels, batch, training))
        prediction = ops.cast(self.network(inputs, training=training), "float32")
        return denoising_mse(prediction, target, ops.reshape(alpha_bar, (-1,)),
                             self.loss_weighting, self.prediction, self.min_snr_gamma)

    def after_train_step(self, step=None):
        """The EMA update; `step` (0 for the first update) defaults to the optimizer's count.

        With `ema_warmup` the decay is `ema_decay_at(ema_decay, step)`; the step comes from the
        optimizer's iterations, saved with the model, so a resumed run continues the warm-up.
        """
        decay = self.ema_decay
        if self.ema_warmup:
            decay = ema_decay_at(decay, self.optimizer.iterations - 1 if step is None else step)
        update_ema(self.ema_network.weights, self.network.weights, decay)

    # -- sampling -----------------------------------------------------------------------
    def guided_output(self, network, x, times, labels, guidance, guided):
        """The network's eps (or v) at `x`, float32, with classifier-free guidance.

        Tensors: `x` `(B, H, W, C)`, `times` `(B,)` in [0, 1), `labels` int32 `(B,)` or None
        (an unconditional network), `guidance` a scalar. With `guided`, one pass on `[x, x]`
        with `[labels, no label]`, mixed as `uncond + guidance * (cond - uncond)`.
        """
        if labels is None:
            return ops.cast(network([x, times], training=False), "float32")
        if not guided:
            return ops.cast(network([x, times, labels], training=False), "float32")
        null = ops.full(ops.shape(labels), self.num_classes, dtype="int32")
        both = network([ops.concatenate([x, x], 0), ops.concatenate([times, times], 0),
                        ops.concatenate([labels, null], 0)], training=False)
        conditional, unconditional = ops.split(ops.cast(both, "float32"), 2, axis=0)
        return unconditional + guidance * (conditional - unconditional)

    def _denoise(self, x, step, times, labels, guidance, options):
        """The predict step: `(pred_x0, pred_eps)` at `x`, both like `x`, in model space.

        `step` is the step's `StepCoefficients` (its rates convert eps or v); `options` a
        `StepOptions`. With `options.clip`, `pred_x0` is clipped to [-1, 1] and `pred_eps`
        keeps the unclipped estimate (diffusers' default).
        """
        network = self.ema_network if options.use_ema else self.network
        output = self.guided_output(network, x, times, labels, guidance, options.guided)
        if self.prediction == "epsilon":
            pred_x0, pred_eps = x0_from_eps(x, output, step.signal_rate, step.noise_rate), output
        else:
            pred_x0 = x0_from_velocity(x, output, step.signal_rate, step.noise_rate)
            pred_eps = eps_from_velocity(x, output, step.signal_rate, step.noise_rate)
        if options.clip:
            pred_x0 = ops.clip(pred_x0, -1.0, 1.0)
        return pred_x0, pred_eps

    def _update(self, x, pred_x0, pred_eps, prev_x0, step, stochastic):
        """The update step: `x_next` by `denoising_update`, with fresh noise if `stochastic`.

        The noise comes from `sampling_seeds`; `prev_x0` is the previous step's `pred_x0`
        (multistep plans) or None.
        """
        noise = keras.random.normal(ops.shape(x), seed=self.sampling_seeds) if stochastic \
            else None
        return denoising_update(x, pred_x0, pred_eps, prev_x0, noise, step)

    def _sampling_step(self, x, row, times, labels, guidance, prev_x0, options):
        """One sampler step, compiled once per (shapes, `options`): predict, then update.

        Tensors: `x` `(B, H, W, C)`, `row` a plan row (`SamplingPlan.coefficients[k]`),
        `times` `(B,)`, `labels` int32 `(B,)` or None, `guidance` a scalar, `prev_x0` like
        `x` or None; `options` a `StepOptions` (Python flags). Returns `(x_next, pred_x0)`.
        """
        step = StepCoefficients.from_row(row)
        pred_x0, pred_eps = self._denoise(x, step, times, labels, guidance, options)
        return self._update(x, pred_x0, pred_eps, prev_x0, step, options.stochastic), pred_x0

    def sample_progressive(self, n, *, steps=50, sampler="ddim", eta=0.0, seed=None, label=None,
                           guidance=None, spacing=None, batch_size=32, progress=True,
                           use_ema=True, clip_denoised=True):
        """Runs a sampler from pure noise and yields every step of every batch.

        Arguments as in `generate`; they are checked here, before the first step. Batches of
        `batch_size` images (the last batch smaller) run one after the other through all steps,
        from the same noise stream as `sample`, so each batch's final `x` is what `sample`
        returns (in model space [-1, 1]).

        Yields:
            `SamplingStep`s, batch by batch and step by step, `len(plan)` per batch. Their
            `x` and `pred_x0` are the compiled step's output tensors (keep them as they are,
            or `keras.ops.convert_to_numpy` the ones a caller keeps).
        """
        n, batch_size = check_int("n", n), check_int("batch_size", batch_size)
        plan = self.schedule.plan(sampler, steps, eta, spacing)
        labels, guidance, guided = sampling_labels(n, label, guidance, self.num_classes)
        logger.info("Sampling %d images with %s: %d network calls per batch of %d, %s weights",
                    n, sampler, len(plan), min(batch_size, n), "EMA" if use_ema else "online")
        options = [StepOptions(use_ema=use_ema, guided=guided, clip=clip_denoised,
                               stochastic=bool(StepCoefficients.from_row(row).noise > 0))
                   for row in plan.coefficients]
        return self._sampling_loop(n, min(batch_size, n), plan, options, labels, guidance,
                                   seed, f"{sampler} sampling" if progress else None)

    def _sampling_loop(self, n, chunk, plan, options, labels, guidance, seed, bar_title):
        """The generator behind `sample_progressive` (its arguments checked there).

        Runs `n` images in batches of `chunk` through `plan`, one compiled graph call per
        step: every per-step input is a tensor made once, before the loop. `bar_title` None
        hides the progress bar.
        """
        if self._compiled_step is None:
            # One traced graph per (shapes, options); the Python loop feeds it tensors only.
            self._compiled_step = tf.function(self._sampling_step, reduce_retracing=True)
        if seed is not None:
            state = self.sampling_seeds.state
            state.assign(ops.convert_to_tensor([int(seed), 0], dtype=state.dtype))
        rows = [ops.convert_to_tensor(row, dtype="float32") for row in plan.coefficients]
        guidance = ops.convert_to_tensor(guidance, dtype="float32")
        multistep = plan.multistep
        times_of = {}  # chunk size -> the per-step time tensors (the last chunk may be smaller)
        with tqdm(total=len(plan) * -(-n // chunk), desc=bar_title, disable=bar_title is None,
                  unit="step") as bar:
            for start in range(0, n, chunk):
                size = min(chunk, n - start)  # the last chunk runs at its own size, unpadded
                if size not in times_of:
                    times_of[size] = [ops.full((size,), t / self.timesteps, dtype="float32")
                                      for t in plan.timesteps]
                times = times_of[size]
                shape = (size, self.image_size, self.image_size, self.channels)
                x = keras.random.normal(shape, seed=self.sampling_seeds)
                chunk_labels = None
                if labels is not None:
                    chunk_labels = ops.convert_to_tensor(labels[start:start + size],
                                                         dtype="int32")
                prev_x0 = ops.zeros(shape) if multistep else None
                for k, t in enumerate(plan.timesteps):
                    x, pred_x0 = self._compiled_step(x, rows[k], times[k], chunk_labels,
                                                     guidance, prev_x0, options[k])
                    prev_x0 = pred_x0 if multistep else None
                    bar.update(1)
                    yield SamplingStep(start=start, count=size, index=k,
                                       timestep=int(t), final=k == len(plan) - 1, x=x,
                                       pred_x0=pred_x0)

    def sample(self, n, *, steps=50, sampler="ddim", eta=0.0, seed=None, label=None,
               guidance=None, spacing=None, batch_size=32, progress=True, use_ema=True,
               clip_denoised=True):
        """Runs a sampler from pure noise; returns float32 `(n, H, W, C)` in model space [-1, 1].

        Drains `sample_progressive`, keeping each batch's final step. See `generate` for the
        arguments.
        """
        chain = self.sample_progressive(n, steps=steps, sampler=sampler, eta=eta, seed=seed,
                                        label=label, guidance=guidance, spacing=spacing,
                                        batch_size=batch_size, progress=progress,
                                        use_ema=use_ema, clip_denoised=clip_denoised)
        outputs = [ops.convert_to_numpy(step.x)[:step.count] for step in chain if step.final]
        return np.concatenate(outputs).astype("float32")

    def generate(self, n, *, steps=50, sampler="ddim", eta=0.0, seed=None, label=None,
                 guidance=None, spacing=None, batch_size=32, progress=True, use_ema=True,
                 clip_denoised=True):
        """Generates `n` images from pure noise.

        Args:
            n: number of images.
            steps: network calls for "ddim" and "dpm++"; "ddpm" always makes all T calls.
            sampler: "ddim", "ddpm" (ancestral, Ho et al.) or "dpm++" (DPM-Solver++ 2M).
            eta: DDIM's eta in [0, 1] (0: deterministic).
            seed: seed of the initial and per-step noise; the same seed gives the same images.
                None continues the model's own sampling stream (new images every call).
            label: None (unconditional), a class index, a class name (case-insensitive;
                "bengin" is accepted) or one label per image. Needs `num_classes`.
            guidance: w in `eps = eps_uncond + w * (eps_cond - eps_uncond)`: 0 is
                unconditional sampling (exactly), 1 plain conditional sampling (the default
                when a label is given), > 1 classifier-free guidance (two network passes).
            spacing: timestep spacing ("leading", "trailing", "linspace"); default "leading"
                for DDIM and diffusers' DPM-Solver spacing for "dpm++".
            batch_size: images per network call (the last batch holds the rest).
            progress: show a tqdm progress bar.
            use_ema: sample with the EMA weights (default) or the online weights.
            clip_denoised: clip each `pred_x0` to [-1, 1] (diffusers' `clip_sample`).

        Returns:
            float32 `(n, image_size, image_size, channels)` in [0, 1].
        """
        images = self.sample(n, steps=steps, sampler=sampler, eta=eta, seed=seed, label=label,
                             guidance=guidance, spacing=spacing, batch_size=batch_size,
                             progress=progress, use_ema=use_ema, clip_denoised=clip_denoised)
        return np.clip((images + 1.0) / 2.0, 0.0, 1.0).astype("float32")
