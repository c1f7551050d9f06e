"""Learning-rate schedules: linear warm-up then cosine decay (`WarmupCosine`).

The schedule is a function of the optimizer's `iterations`, which `.keras` files save with the
optimizer, so a resumed run continues the schedule where it stopped. `make_schedule` turns the
`lungkit.training.train(lr_schedule=...)` option into a schedule once the total number of
optimizer steps (epochs x steps per epoch) is known.
"""

import math

import keras
from keras import ops

from lungkit.checks import check_choice, check_int, check_number

LR_SCHEDULES = ("constant", "cosine")


@keras.saving.register_keras_serializable(package="lungkit")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """`peak * step / warmup` for step < warmup, then cosine decay to `peak * final_fraction`.

    Args:
        peak: the learning rate at the end of the warm-up.
        total_steps: optimizer steps of the whole run; the rate is the final one from there on.
        warmup_steps: steps of the linear warm-up from 0 (0: start at `peak`).
        final_fraction: the last rate as a fraction of `peak`.
    """

    def __init__(self, peak, total_steps, warmup_steps=0, final_fraction=0.0):
        self.peak = check_number("peak", peak, 0.0, None, low_open=True)
        self.total_steps = check_int("total_steps", total_steps, 1)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, 0)
        if self.warmup_steps >= self.total_steps and self.total_steps > 1:
            raise ValueError(f"`warmup_steps` must be < total_steps ({self.total_steps}). "
                             f"Received: warmup_steps={warmup_steps}")
        self.final_fraction = check_number("final_fraction", final_fraction, 0.0, 1.0)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = float(max(self.warmup_steps, 1))
        warm = self.peak * step / warmup
        span = float(max(self.total_steps - self.warmup_steps, 1))
        progress = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
        cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
        decayed = self.peak * (self.final_fraction + (1.0 - self.final_fraction) * cosine)
        return ops.where(step < self.warmup_steps, warm, decayed)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "final_fraction": self.final_fraction}


def make_schedule(kind, learning_rate, total_steps, warmup=0.0):
    """The learning rate (a float) or schedule for `train(lr_schedule=kind)`.

    Args:
        kind: "constant" (returns `learning_rate`) or "cosine" (a `WarmupCosine`).
        learning_rate: the peak rate.
        total_steps: epochs x steps per epoch of the whole run.
        warmup: warm-up length, a fraction of `total_steps` in [0, 1) or a number of steps >= 1.
    """
    check_choice("lr_schedule", kind, LR_SCHEDULES)
    if kind == "constant":
        return learning_rate
    warmup = check_number("warmup", warmup, 0.0)
    steps = int(round(warmup * total_steps)) if warmup < 1 else int(warmup)
    return WarmupCosine(learning_rate, total_steps, min(steps, max(total_steps - 1, 0)))
