"""The diffusion training recipe: min-SNR-gamma loss weights, the EMA update and its warm-up.

- `loss_weights`: Hang et al. (2023), "Efficient Diffusion Training via Min-SNR Weighting
  Strategy" (ICCV). With SNR(t) = alpha_bar / (1 - alpha_bar), the per-timestep weight of the
  MSE is min(SNR, gamma) / SNR for epsilon-prediction and min(SNR, gamma) / (SNR + 1) for
  v-prediction (their Eq. for the eps and v targets; diffusers' `compute_snr` recipe). It caps
  the weight of the low-noise timesteps, whose easy targets otherwise dominate the gradient.
- `ema_decay_at`: the EMA decay at update t, min(decay, (1 + t) / (10 + t)), as diffusers'
  `EMAModel` (without `use_ema_warmup`). A run of a few hundred updates with decay 0.999 would
  otherwise keep ~e^-0.3 = 74 % of its initial (random) weights in the EMA.
- `update_ema`: the EMA update itself, in or out of `tf.distribute`.
"""

import tensorflow as tf  # tf.distribute only (the EMA update under a strategy)
from keras import ops

LOSS_WEIGHTINGS = ("none", "min_snr")


def loss_weights(alpha_bar, prediction, gamma):
    """The min-SNR-gamma weight of each timestep's MSE (a tensor like `alpha_bar`).

    Args:
        alpha_bar: float tensor of alpha_bar_t in (0, 1), any shape.
        prediction: "epsilon" or "v" (the network's target).
        gamma: the cap on the SNR (> 0; the paper's default is 5).
    """
    alpha_bar = ops.cast(alpha_bar, "float32")
    snr = alpha_bar / (1.0 - alpha_bar)
    capped = ops.minimum(snr, float(gamma))
    return capped / (snr + 1.0) if prediction == "v" else capped / snr


def denoising_mse(prediction, target, alpha_bar, weighting, kind, gamma):
    """The training loss: the MSE of `prediction` against `target`, weighted per image.

    Args:
        prediction, target: float32 `(B, H, W, C)`.
        alpha_bar: float `(B,)`, alpha_bar_t of each image's timestep.
        weighting: a member of `LOSS_WEIGHTINGS` ("none": the plain MSE).
        kind: "epsilon" or "v", what the network predicts (for "min_snr").
        gamma: the min-SNR cap.
    """
    if weighting == "none":
        return ops.mean(ops.square(prediction - target))
    per_image = ops.mean(ops.square(prediction - target), axis=(1, 2, 3))
    return ops.mean(loss_weights(alpha_bar, kind, gamma) * per_image)


def ema_decay_at(decay, step):
    """The EMA decay of update `step` (0 for the first): min(decay, (1 + step) / (10 + step)).

    `step` may be a Python number or a tensor (e.g. the optimizer's iterations minus one).
    """
    step = ops.cast(step, "float32")
    return ops.minimum(float(decay), (1.0 + step) / (10.0 + step))


def update_ema(ema_variables, variables, decay):
    """`ema = decay * ema + (1 - decay) * w` for every pair, in or out of `tf.distribute`.

    In a replica context (inside `fit` under a strategy) the update runs once per variable
    through `merge_call`, as Keras' own optimizer updates its variables; `decay` (a number or
    a tensor, e.g. the warm-up's) goes through it as an argument, per replica.
    """
    def assign(ema, value, decay):
        return ema.assign(decay * ema + (1.0 - decay) * value)

    def update(strategy, decay):
        for ema_variable, variable in zip(ema_variables, variables, strict=True):
            strategy.extended.update(ema_variable.value, assign, args=(variable.value, decay),
                                     group=False)

    context = tf.distribute.get_replica_context()
    if context is None:
        update(tf.distribute.get_strategy(), decay)
    else:
        context.merge_call(update, args=(decay,))
