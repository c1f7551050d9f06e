"""The sampling loop's value types and its label/guidance rule, shared by lungkit's diffusion models.

`DiffusionModel` (and `LatentDiffusion` through it) compiles one step per `StepOptions`, yields
`SamplingStep`s from `sample_progressive`, and turns `generate`'s `label` / `guidance`
arguments into per-image labels with `sampling_labels`.
"""

import dataclasses
from typing import NamedTuple

import numpy as np

from lungkit.data.labels import resolve_labels


class StepOptions(NamedTuple):
    """The Python flags of the compiled sampling step: each combination is traced once.

    A NamedTuple, so `tf.function` keys its traces on the values (not on the object).

    Attributes:
        use_ema: call the EMA network (else the online one).
        guided: classifier-free guidance, two network passes (a label and w not in {0, 1}).
        clip: clip `pred_x0` to [-1, 1] (diffusers' `clip_sample`).
        stochastic: add fresh noise from `sampling_seeds` (the step's `noise` coefficient > 0).
    """

    use_ema: bool
    guided: bool
    clip: bool
    stochastic: bool


@dataclasses.dataclass(frozen=True)
class SamplingStep:
    """One step of `DiffusionModel.sample_progressive` on one batch of images.

    Attributes:
        start: index, among the `n` images asked for, of this batch's first image.
        count: images in this batch (`x` has exactly this many rows).
        index: the step, 0 .. len(plan) - 1; `final` is True on the last one.
        timestep: t of this step's network call.
        x: float32 tensor `(batch, H, W, C)`, the sample after this step, in model space
            (the batch's output when `final`).
        pred_x0: float32 tensor like `x`, this step's estimate of the clean image.
    """

    start: int
    count: int
    index: int
    timestep: int
    final: bool
    x: object
    pred_x0: object


def sampling_labels(n, label, guidance, num_classes):
    """`(labels int32 (n,) or None, guidance float, guided bool)` for a sampler of `generate`.

    `num_classes` is the model's (None: unconditional); index `num_classes` is "no label".

    `guided` (two network passes) when a label comes with w not in {0, 1}; w = 0 samples
    unconditionally, so its labels are all "no label".
    """
    if label is None:
        if guidance not in (None, 0, 0.0):
            raise ValueError(f"`guidance` needs a `label`. Received: guidance={guidance}, "
                             f"label=None")
        if num_classes is None:
            return None, 0.0, False
        return np.full(n, num_classes, dtype=np.int32), 0.0, False
    if num_classes is None:
        raise ValueError(f"`label` needs a model built with `num_classes`. "
                         f"Received: label={label!r}, num_classes=None")
    guidance = 1.0 if guidance is None else float(guidance)
    if guidance < 0:
        raise ValueError(f"`guidance` must be >= 0. Received: guidance={guidance}")
    labels = resolve_labels(label, n, num_classes)
    if guidance == 0.0:
        return np.full(n, num_classes, dtype=np.int32), 0.0, False
    return labels, guidance, guidance != 1.0
