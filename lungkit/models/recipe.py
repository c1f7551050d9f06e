"""Pure functions of the diffusion training recipe: min-SNR-gamma loss weights, EMA warm-up.

- `loss_weights`: Hang et al. (2023), "Efficient Diffusion Training via Min-SNR Weighting
  Strategy" (ICCV). With SNR(t) = alpha_bar / (1 - alpha_bar), the per-timestep weight of the
  MSE is min(SNR, gamma) / SNR for epsilon-prediction and min(SNR, gamma) / (SNR + 1) for
  v-prediction (their Eq. for the eps and v targets; diffusers' `compute_snr` recipe). It caps
  the weight of the low-noise timesteps, whose easy targets otherwise dominate the gradient.
- `ema_decay_at`: the EMA decay at update t, min(decay, (1 + t) / (10 + t)), as diffusers'
  `EMAModel` (without `use_ema_warmup`). A run of a few hundred updates with decay 0.999 would
  otherwise keep ~e^-0.3 = 74 % of its initial (random) weights in the EMA.
"""

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


def ema_decay_at(decay, step):
    """The EMA decay of update `step` (0 for the first): min(decay, (1 + step) / (10 + step)).

    `step` may be a Python number or a tensor (e.g. the optimizer's iterations minus one).
    """
    step = ops.cast(step, "float32")
    return ops.minimum(float(decay), (1.0 + step) / (10.0 + step))
