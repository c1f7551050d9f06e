"""`DistilledDiffusion`: a few-step student distilled from a `DiffusionModel`.

Progressive distillation (Salimans & Ho 2022, "Progressive distillation for fast sampling of
diffusion models", Algorithm 2): a student that starts from its teacher's weights learns to
make in one deterministic DDIM step what the teacher makes in two; then it becomes the
teacher of the next round, and the step count halves again: `start_steps` -> start_steps / 2
-> ... -> `steps`. All rounds run in one training (one `lungkit.training.fit` run, so it
resumes like any other): round r is `optimizer.iterations // round_updates`, and after the
last update of a round the student's weights are copied into the frozen `previous_network`
(the next round's teacher) and, for 4 steps or fewer, into a kept network that
`generate(steps=...)` samples with.

One round, one image (notation of `lungkit.models.schedule`; `a`, `s` the signal and noise
rates; t > t' > t'' the student's step t -> t'' split at the teacher's midpoint t'):

    z_t   = a_t x + s_t eps                              x a training image in [-1, 1]
    z_t'  = DDIM_teacher(z_t, t -> t'),  z_t'' = DDIM_teacher(z_t', t' -> t'')
    x~    = (z_t'' - (s_t'' / s_t) z_t) / (a_t'' - (s_t'' / s_t) a_t)   (eq. 8: the x_0 whose
            single DDIM step from z_t lands on z_t'')
    loss  = max(a_t^2 / s_t^2, 1) * |x^_student(z_t) - x~|^2   ("truncated SNR" weighting)

The student predicts v (Salimans & Ho, sec. 4: x_0 through v stays well defined at t = T-1,
where 1-step sampling starts); so the teacher must be a v-prediction model. Timesteps use
"trailing" spacing, which starts at T-1 and nests: the N-step grid is every second entry of
the 2N-step grid (checked when the student is built).

Guided distillation (Meng et al. 2023, "On distillation of guided diffusion models"): for a
conditional teacher the round-0 target uses classifier-free guidance with a weight w drawn
per image from [0, max_guidance] (lungkit's w: 0 unconditional, 1 conditional), and the
student gets w as an input, so one network call per step replaces guidance's two. w enters
as a constant extra image channel (its stem kernel slice starts at zero, so the untrained
student is its teacher exactly). As in `DiffusionModel`, w = 0 samples with the "no label"
class: the unconditional student, exactly.
"""

import logging
import math

import keras
import numpy as np
import tensorflow as tf  # tf.function (the compiled sampling step) only
from keras import ops
from tqdm.auto import tqdm

from lungkit.checks import check_int, check_number, check_seed
from lungkit.models.base import GenerativeModel
from lungkit.models.diffusion import DiffusionModel
from lungkit.models.latent import freeze_submodel
from lungkit.models.recipe import update_ema
from lungkit.models.sampling import sampling_labels
from lungkit.models.schedule import (
    StepCoefficients,
    denoising_update,
    eps_from_velocity,
    x0_from_velocity,
)
from lungkit.models.unet import build_unet

logger = logging.getLogger(__name__)

# Students of this many steps or fewer are kept for sampling (the intermediate ones only
# teach the next round): 4, 2 and 1 steps, the few-step regime of Salimans & Ho's Table 1.
KEPT_STEPS_MAX = 4
# The defaults: 16 teacher DDIM steps distilled in two rounds (16 -> 8 -> 4) to 4 steps.
DEFAULT_STEPS, DEFAULT_START_STEPS = 4, 16
# Meng et al. (2023) train their guided students on w in [0, 4] of their parametrisation
# (w = 0 conditional); lungkit's w = 1 + theirs, so 4 covers the usual 1..4.
DEFAULT_MAX_GUIDANCE = 4.0
SPACING = "trailing"  # starts at T-1 and halves by taking every second timestep


def halving_rounds(start_steps, steps):
    """The student step counts of the rounds: `(start_steps / 2, ..., steps)`.

    Raises:
        ValueError: `start_steps` is not `steps * 2**k` with k >= 1.
    """
    steps, start_steps = check_int("steps", steps), check_int("start_steps", start_steps)
    ratio = start_steps // steps
    if start_steps % steps or ratio < 2 or ratio & (ratio - 1):
        raise ValueError(f"`start_steps` must be `steps` times a power of two >= 2 (each round "
                         f"halves the steps). Received: start_steps={start_steps}, "
                         f"steps={steps}")
    return tuple(start_steps >> k for k in range(1, int(math.log2(ratio)) + 1))


def check_teacher(teacher):
    """Refuses a teacher that is not a v-prediction `DiffusionModel` (the one kind this
    distillation supports: a VAE, a `LatentDiffusion`, a student or an eps model is not).

    Raises:
        TypeError: `teacher` is not a `DiffusionModel`.
        ValueError: it predicts eps, not v.
    """
    if not isinstance(teacher, DiffusionModel):
        raise TypeError(f"`teacher` must be a lungkit DiffusionModel (a pixel DDPM). "
                        f"Received: a {type(teacher).__name__}")
    if teacher.prediction != "v":
        raise ValueError(f"`teacher` must predict v (prediction='v'): progressive "
                         f"distillation samples from x_0 through v. Received: "
                         f"prediction={teacher.prediction!r}")
    return teacher


def build_student_network(teacher, guided, name):
    """A U-Net like the teacher's, with one more input channel (w) when `guided`.

    Starts with the teacher's EMA weights; the w channel's stem kernel slice is zero.
    """
    network = build_unet(image_size=teacher.image_size, channels=teacher.channels + guided,
                         out_channels=teacher.channels, widths=teacher.widths,
                         blocks_per_level=teacher.blocks_per_level,
                         attention_levels=teacher.attention_levels, time_embedding=True,
                         num_classes=teacher.num_classes, name=name)
    weights = []
    for mine, theirs in zip(network.get_weights(), teacher.ema_network.get_weights(),
                            strict=True):
        if mine.shape != theirs.shape:  # the stem kernel (3, 3, C + 1, width): w's slice 0
            theirs = np.concatenate([theirs, np.zeros_like(mine[:, :, -1:])], axis=2)
        weights.append(theirs)
    network.set_weights(weights)
    return network


@keras.saving.register_keras_serializable(package="lungkit")
class DistilledDiffusion(GenerativeModel):
    """A student that samples in `steps` (and the kept 4, 2, 1) DDIM steps of its own.

    Args:
        teacher: a trained v-prediction `DiffusionModel`, kept frozen inside the student
            (its EMA weights teach round 0 and start the student).
        steps: the last round's step count (1, 2, 4, ...).
        start_steps: the teacher's DDIM steps in round 0, `steps * 2**k` (k >= 1 rounds).
        round_updates: optimizer updates per round; train for
            `len(rounds) * round_updates` updates (`total_updates`).
        max_guidance: conditional teachers: w is drawn from [0, max_guidance] per image.
        class_dropout: conditional teachers: the share of images trained as "no label",
            w = 0 (default: the teacher's).
        clip_denoised: clip every `pred_x0` to [-1, 1], in the teacher's target steps and in
            sampling (what `DiffusionModel.generate` does by default).
        seed: seed of the training noise, timesteps and w.

    Training batches: images float32 `(B, H, W, C)` in [0, 1] (the teacher's size), or
    `(images, labels)` for a conditional teacher.
    """

    loss_names = ("loss",)

    def __init__(self, teacher, steps=DEFAULT_STEPS, start_steps=DEFAULT_START_STEPS,
                 round_updates=1000,
                 max_guidance=DEFAULT_MAX_GUIDANCE, class_dropout=None, clip_denoised=True,
                 seed=None, **kwargs):
        check_teacher(teacher)
        self.rounds = halving_rounds(start_steps, steps)
        round_updates = check_int("round_updates", round_updates)
        max_guidance = check_number("max_guidance", max_guidance, 0.0, None)
        if class_dropout is None:
            class_dropout = teacher.class_dropout
        class_dropout = check_number("class_dropout", class_dropout, 0.0, 1.0, high_open=True)
        seed = check_seed("seed", seed)
        super().__init__(**kwargs)
        self.teacher = freeze_submodel(teacher)
        self.steps, self.start_steps, self.round_updates = steps, start_steps, round_updates
        self.max_guidance, self.class_dropout = max_guidance, class_dropout
        self.clip_denoised, self.seed = bool(clip_denoised), seed
        self.guided = teacher.num_classes is not None
        self._build_grids()
        self.network = build_student_network(teacher, self.guided, "student_network")
        self.previous_network = self._frozen_copy("previous_network") \
            if len(self.rounds) > 1 else None
        self.kept_rounds = [r for r, s in enumerate(self.rounds[:-1]) if s <= KEPT_STEPS_MAX]
        self.kept_networks = [self._frozen_copy(f"student_{self.rounds[r]}_steps")
                              for r in self.kept_rounds]
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.sampling_seeds = keras.random.SeedGenerator(
            None if seed is None else seed + 1, name="sampling_seeds")
        self._compiled_steps = {}
        self.built = True
        logger.info("DistilledDiffusion: rounds %s, %d updates each, %s", " -> ".join(
            map(str, (start_steps, *self.rounds))), round_updates,
            "guided (w input)" if self.guided else "unconditional")

    def _frozen_copy(self, name):
        network = build_student_network(self.teacher, self.guided, name)
        network.trainable = False  # assigned at round ends, never by the optimizer
        return network

    def _build_grids(self):
        """Per round, per student step: t, the teacher's midpoint t' and t'' (-1 at the end)."""
        schedule, rows = self.teacher.schedule, []
        for steps in self.rounds:
            fine, coarse = (schedule.ddim_timesteps(k, SPACING) for k in (2 * steps, steps))
            if not np.array_equal(fine[::2], coarse):
                raise ValueError(f"The {SPACING} grids of {2 * steps} and {steps} steps do not "
                                 f"nest for timesteps={schedule.timesteps}: {fine} vs {coarse}; "
                                 f"choose steps that divide T.")
            rows += [(fine[2 * i], fine[2 * i + 1], fine[2 * i + 2] if 2 * i + 2 < len(fine)
                      else -1) for i in range(steps)]
        self._grid = np.asarray(rows, dtype="int32")  # (sum of rounds, 3)
        self._round_offsets = np.cumsum((0, *self.rounds[:-1])).astype("int32")
        self._round_counts = np.asarray(self.rounds, dtype="int32")
        # alpha-bar at t + 1, so that t = -1 (the end of sampling) reads alpha-bar = 1
        self._alpha_bars = np.concatenate([[1.0], self.teacher.schedule.alphas_cumprod]) \
            .astype("float32")

    # -- shape facts ---------------------------------------------------------------------
    image_size = property(lambda self: self.teacher.image_size)
    channels = property(lambda self: self.teacher.channels)
    timesteps = property(lambda self: self.teacher.timesteps)
    num_classes = property(lambda self: self.teacher.num_classes)

    @property
    def total_updates(self):
        """Optimizer updates that train every round."""
        return len(self.rounds) * self.round_updates

    # -- training ------------------------------------------------------------------------
    def _inputs(self, x, times, labels, guidance):
        """The student network's inputs: `[x (+ w channel), t / T, labels?]`."""
        if self.guided:
            w = ops.reshape(ops.cast(guidance, x.dtype), (-1, 1, 1, 1))
            x = ops.concatenate([x, ops.ones_like(x[..., :1]) * w], axis=-1)
        inputs = [x, times]
        if self.num_classes is not None:
            inputs.append(labels)
        return inputs

    def call(self, images, training=False):
        """The student's v at t = 0, no label, w = 0 on images in [0, 1] (builds the model)."""
        x = ops.cast(images, "float32") * 2.0 - 1.0
        batch = ops.shape(x)[0]
        null = ops.full((batch,), self.num_classes or 0, dtype="int32")
        return self.network(self._inputs(x, ops.zeros((batch,)), null, ops.zeros((batch,))),
                            training=training)

    def _round(self):
        """The round of the next update (int32 scalar): 0 .. len(rounds) - 1."""
        if getattr(self, "optimizer", None) is None:  # not compiled: the first round
            return ops.convert_to_tensor(0, dtype="int32")
        done = ops.cast(self.optimizer.iterations, "int32") // self.round_updates
        return ops.minimum(done, len(self.rounds) - 1)

    def _conditions(self, labels, batch, training):
        """`(labels int32 (B,), w float32 (B,))` for training; `(None, None)` unconditional."""
        if not self.guided:
            return None, None
        null = ops.full((batch,), self.num_classes, dtype="int32")
        labels = null if labels is None else ops.cast(ops.reshape(labels, (-1,)), "int32")
        w = keras.random.uniform((batch,), 0.0, self.max_guidance, seed=self.seed_generator)
        if training and self.class_dropout > 0:
            dropped = keras.random.uniform((batch,), seed=self.seed_generator) < self.class_dropout
            labels = ops.where(dropped, null, labels)
        return labels, ops.where(labels == self.num_classes, 0.0, w)

    def _rates(self, t):
        alpha_bar = ops.reshape(ops.take(ops.convert_to_tensor(self._alpha_bars), t + 1),
                                (-1, 1, 1, 1))
        return ops.sqrt(alpha_bar), ops.sqrt(1.0 - alpha_bar)

    def _ddim_step(self, output_of, x, t, t_next):
        """One deterministic DDIM step `t -> t_next` with `output_of(x, times)` = v."""
        signal, noise = self._rates(t)
        v = output_of(x, ops.cast(t, "float32") / float(self.timesteps))
        pred_x0 = x0_from_velocity(x, v, signal, noise)
        pred_eps = eps_from_velocity(x, v, signal, noise)
        if self.clip_denoised:
            pred_x0 = ops.clip(pred_x0, -1.0, 1.0)
        next_signal, next_noise = self._rates(t_next)
        return next_signal * pred_x0 + next_noise * pred_eps

    def _target(self, round_index, z, t, t_mid, t_next, labels, w):
        """x~ of the module docstring: the x_0 a single step must predict (no gradient)."""
        def teacher_output(x, times):  # round 0: the teacher, guided with w per image
            w_images = None if w is None else ops.reshape(w, (-1, 1, 1, 1))
            return self.teacher.guided_output(self.teacher.ema_network, x, times, labels,
                                               w_images, self.guided)

        def previous_output(x, times):  # later rounds: the previous round's student
            inputs = self._inputs(x, times, labels, w)
            return ops.cast(self.previous_network(inputs, training=False), "float32")

        def two_steps(output_of):
            return self._ddim_step(output_of, self._ddim_step(output_of, z, t, t_mid), t_mid,
                                   t_next)

        if self.previous_network is None:
            z_next = two_steps(teacher_output)
        else:
            z_next = ops.cond(round_index == 0, lambda: two_steps(teacher_output),
                              lambda: two_steps(previous_output))
        (signal, noise), (next_signal, next_noise) = self._rates(t), self._rates(t_next)
        ratio = next_noise / noise
        return ops.stop_gradient((z_next - ratio * z) / (next_signal - ratio * signal))

    def compute_losses(self, images, labels=None, training=False):
        """The distillation loss of the current round (module docstring): `(loss,)`, a float32
        scalar, for `images` and `labels` as in `DiffusionModel.compute_losses`."""
        x0 = ops.cast(images, "float32") * 2.0 - 1.0
        batch = ops.shape(x0)[0]
        round_index = self._round()
        count = ops.take(ops.convert_to_tensor(self._round_counts), round_index)
        step = ops.cast(keras.random.uniform((batch,), seed=self.seed_generator)
                        * ops.cast(count, "float32"), "int32")
        rows = ops.take(ops.convert_to_tensor(self._grid), ops.take(
            ops.convert_to_tensor(self._round_offsets), round_index) + ops.minimum(
                step, count - 1), axis=0)
        t, t_mid, t_next = rows[:, 0], rows[:, 1], rows[:, 2]
        signal, noise = self._rates(t)
        z = signal * x0 + noise * keras.random.normal(ops.shape(x0), seed=self.seed_generator)
        labels, w = self._conditions(labels, batch, training)
        target = self._target(round_index, z, t, t_mid, t_next, labels, w)
        times = ops.cast(t, "float32") / float(self.timesteps)
        v = ops.cast(self.network(self._inputs(z, times, labels, w), training=training),
                     "float32")
        pred_x0 = x0_from_velocity(z, v, signal, noise)
        weight = ops.maximum(ops.square(signal / noise), 1.0)
        return (ops.mean(weight * ops.square(pred_x0 - target)),)

    def after_train_step(self):
        """At the end of a round: the student's weights into the next round's teacher and,
        for a kept step count, into its sampling network (copies as EMA updates with decay 0,
        decay 1 otherwise, so no branch is needed in or out of `tf.distribute`)."""
        if self.previous_network is None:
            return
        done = ops.cast(self.optimizer.iterations, "int32")
        ended = done // self.round_updates - 1  # the round that ended with this update
        at_end = ops.logical_and(done % self.round_updates == 0, ended < len(self.rounds) - 1)
        update_ema(self.previous_network.weights, self.network.weights,
                   ops.where(at_end, 0.0, 1.0))
        for round_index, network in zip(self.kept_rounds, self.kept_networks, strict=True):
            update_ema(network.weights, self.network.weights,
                       ops.where(ops.logical_and(at_end, ended == round_index), 0.0, 1.0))

    # -- sampling ------------------------------------------------------------------------
    @property
    def trained_steps(self):
        """The step counts `generate` accepts now: finished kept rounds and the current one."""
        current = int(ops.convert_to_numpy(self._round()))
        return tuple(sorted({self.rounds[r] for r in self.kept_rounds if r < current}
                            | {self.rounds[current]}, reverse=True))

    def _network_for(self, steps):
        trained = self.trained_steps
        if steps not in trained:
            optimizer = getattr(self, "optimizer", None)
            done = 0 if optimizer is None else int(optimizer.iterations)
            raise ValueError(
                f"`steps` must be one of this student's trained step counts {trained}. "
                f"Received: steps={steps!r} (rounds {self.start_steps} -> "
                f"{' -> '.join(map(str, self.rounds))}, {self.round_updates} updates each, "
                f"{done} done; students of <= {KEPT_STEPS_MAX} steps are kept)")
        if steps == self.rounds[int(ops.convert_to_numpy(self._round()))]:
            return self.network
        return self.kept_networks[[self.rounds[r] for r in self.kept_rounds].index(steps)]

    def _sampling_step(self, network, x, row, times, labels, guidance):
        """One student DDIM step (compiled once per network and shapes)."""
        step = StepCoefficients.from_row(row)
        v = ops.cast(network(self._inputs(x, times, labels, guidance), training=False),
                     "float32")
        pred_x0 = x0_from_velocity(x, v, step.signal_rate, step.noise_rate)
        pred_eps = eps_from_velocity(x, v, step.signal_rate, step.noise_rate)
        if self.clip_denoised:
            pred_x0 = ops.clip(pred_x0, -1.0, 1.0)
        return denoising_update(x, pred_x0, pred_eps, None, None, step)

    def generate(self, n, *, steps=None, seed=None, label=None, guidance=None, batch_size=32,
                 progress=True):
        """Generates `n` images in `steps` student DDIM steps (one network call each).

        Args:
            n: number of images.
            steps: one of `trained_steps` (default: `steps`, the last round's).
            seed: seed of the initial noise (the same noise as the teacher's `generate` with
                this seed and batch size); None continues the student's own stream.
            label, guidance: as in `DiffusionModel.generate` (w = 0: unconditional, exactly;
                w is the student's input, one network call per step at any w).
            batch_size: images per network call.
            progress: show a tqdm progress bar.

        Returns:
            float32 `(n, image_size, image_size, channels)` in [0, 1].
        """
        n, batch_size = check_int("n", n), check_int("batch_size", batch_size)
        steps = self.steps if steps is None else steps
        network = self._network_for(steps)
        labels, guidance, _ = sampling_labels(n, label, guidance, self.teacher.num_classes)
        plan = self.teacher.schedule.plan("ddim", steps, 0.0, SPACING)
        key = (steps, network.name)  # a step count moves to a kept network when its round ends
        if key not in self._compiled_steps:
            self._compiled_steps[key] = tf.function(
                lambda *args: self._sampling_step(network, *args), reduce_retracing=True)
        compiled = self._compiled_steps[key]
        if seed is not None:
            state = self.sampling_seeds.state
            state.assign(ops.convert_to_tensor([int(seed), 0], dtype=state.dtype))
        rows = [ops.convert_to_tensor(row, dtype="float32") for row in plan.coefficients]
        outputs = []
        with tqdm(total=-(-n // batch_size) * steps, disable=not progress, unit="step",
                  desc=f"{steps}-step student") as bar:
            for start in range(0, n, batch_size):
                size = min(batch_size, n - start)
                x = keras.random.normal((size, self.image_size, self.image_size,
                                         self.channels), seed=self.sampling_seeds)
                chunk_labels = None if labels is None else \
                    ops.convert_to_tensor(labels[start:start + size], dtype="int32")
                w = ops.full((size,), guidance, dtype="float32")
                for k, t in enumerate(plan.timesteps):
                    times = ops.full((size,), t / self.timesteps, dtype="float32")
                    x = compiled(x, rows[k], times, chunk_labels, w)
                    bar.update(1)
                outputs.append(ops.convert_to_numpy(x))
        images = np.concatenate(outputs)
        return np.clip((images + 1.0) / 2.0, 0.0, 1.0).astype("float32")

    # -- serialisation -------------------------------------------------------------------
    def get_config(self):
        return {**super().get_config(),
                "teacher": keras.saving.serialize_keras_object(self.teacher),
                "steps": self.steps, "start_steps": self.start_steps,
                "round_updates": self.round_updates, "max_guidance": self.max_guidance,
                "class_dropout": self.class_dropout, "clip_denoised": self.clip_denoised,
                "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("teacher"), dict):
            config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        return cls(**config)
