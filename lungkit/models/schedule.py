"""Diffusion maths as pure functions: noise schedules and sampler update rules (numpy, float64).

No Keras at import time: `lungkit.models.diffusion` (pixel space) and `lungkit.models.latent` (latent
space) build their models on these functions. Each sampler is a `SamplingPlan`: one row of
named coefficients (`StepCoefficients`) per step, all applied by the one `denoising_update`.

- Ho et al. (2020), "Denoising Diffusion Probabilistic Models" (DDPM): the forward process and
  ancestral sampling with the posterior of their eq. (7).
- Nichol & Dhariwal (2021), "Improved DDPM": the cosine schedule (`s = 0.008`, betas capped).
- Song et al. (2021), "Denoising Diffusion Implicit Models" (DDIM): eq. (12) and (16).
- Lu et al. (2022), "DPM-Solver++": the multistep second-order solver (2M), Algorithm 2.
- Salimans & Ho (2022): v-prediction.

The numbers match diffusers' `DDPMScheduler`, `DDIMScheduler` (`steps_offset=0`,
`set_alpha_to_one=True`) and `DPMSolverMultistepScheduler` (`solver_order=2`, midpoint,
`final_sigmas_type="zero"`) with the same settings.

Notation (code name -> paper symbol):

    ==================  ===============================================================
    betas               beta_t, the variance added at step t (t = 0 .. T-1 here)
    alphas              alpha_t = 1 - beta_t
    alphas_cumprod      alpha-bar_t = prod_{s <= t} alpha_s
    signal_rate         sqrt(alpha-bar_t)   (alpha_t in DPM-Solver's notation)
    noise_rate          sqrt(1 - alpha-bar_t)   (sigma_t in DPM-Solver's notation)
    log_snr             lambda_t = log(signal_rate / noise_rate)
    x_t                 x_t = signal_rate * x_0 + noise_rate * eps
    pred_x0             x_0-hat, the model's estimate of the clean image
    pred_eps            eps-hat, the model's estimate of the noise
    velocity            v = signal_rate * eps - noise_rate * x_0
    eta                 DDIM's eta: 0 = deterministic, 1 = DDPM-like variance
    t_prev = -1         "before step 0": alpha-bar = 1 (diffusers' set_alpha_to_one=True)
    ==================  ===============================================================
"""

import dataclasses
import logging
import math

import numpy as np

logger = logging.getLogger(__name__)

# Ho et al. (2020), section 4: beta rises linearly from 1e-4 to 0.02 over T = 1000 steps.
LINEAR_BETA_START = 1e-4
LINEAR_BETA_END = 0.02
# Nichol & Dhariwal (2021), eq. (17): offset s = 0.008; betas clipped to 0.999 near t = T.
COSINE_OFFSET = 0.008
COSINE_MAX_BETA = 0.999
# diffusers' DDPMScheduler "fixed_small" variance floor.
MIN_POSTERIOR_VARIANCE = 1e-20

PREDICTIONS = ("epsilon", "v")
SAMPLERS = ("ddim", "ddpm", "dpm++")
SPACINGS = ("leading", "trailing", "linspace")


# ----------------------------------------------------------------------------------------
# Schedules (pure functions)
# ----------------------------------------------------------------------------------------
def linear_schedule(timesteps, beta_start=LINEAR_BETA_START, beta_end=LINEAR_BETA_END):
    """DDPM's linear betas: `linspace(beta_start, beta_end, timesteps)`, float64 `(T,)`."""
    return np.linspace(beta_start, beta_end, timesteps, dtype=np.float64)


def cosine_alpha_bar(times, offset=COSINE_OFFSET):
    """Nichol & Dhariwal's unnormalised `f(t) = cos^2(((t + s) / (1 + s)) * pi / 2)`, t in [0, 1]."""
    return np.cos((np.asarray(times, np.float64) + offset) / (1.0 + offset) * np.pi / 2) ** 2


def cosine_schedule(timesteps, max_beta=COSINE_MAX_BETA):
    """Cosine betas (diffusers' "squaredcos_cap_v2"): `min(1 - f((i+1)/T) / f(i/T), max_beta)`."""
    steps = np.arange(timesteps + 1, dtype=np.float64) / timesteps
    f = cosine_alpha_bar(steps)
    return np.minimum(1.0 - f[1:] / f[:-1], max_beta)


# Once a name has been used by a run, never change what it computes; add a new name.
SCHEDULES = {"linear": linear_schedule, "cosine": cosine_schedule}


def ddim_timesteps(timesteps, num_steps, spacing="leading"):
    """The descending timesteps a DDIM-style sampler visits (diffusers `set_timesteps`).

    Args:
        timesteps: T, the number of training timesteps.
        num_steps: sampling steps, `1 <= num_steps <= T`.
        spacing: "leading": `arange(num_steps) * (T // num_steps)` (diffusers' DDIM default,
            ends at 0); "trailing": `round(arange(T, 0, -T / num_steps)) - 1` (starts at T-1);
            "linspace": `round(linspace(0, T - 1, num_steps))`.

    Returns:
        int64 `(num_steps,)`, strictly descending. A sampler's previous timestep is the next
        entry of this list (and -1 after the last), never `t - T // num_steps`, which is wrong
        for "trailing".
    """
    if spacing not in SPACINGS:
        raise ValueError(f"`spacing` must be one of {SPACINGS}. Received: spacing={spacing!r}")
    if not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= timesteps:
        raise ValueError(f"`num_steps` must be an integer in [1, {timesteps}]. "
                         f"Received: num_steps={num_steps!r}")
    if spacing == "leading":
        steps = np.arange(num_steps) * (timesteps // num_steps)
    elif spacing == "trailing":
        steps = np.round(np.arange(timesteps, 0, -timesteps / num_steps)) - 1
    else:
        steps = np.round(np.linspace(0, timesteps - 1, num_steps))
    return np.sort(steps.astype(np.int64))[::-1].copy()


def dpm_solver_timesteps(timesteps, num_steps):
    """diffusers' `DPMSolverMultistepScheduler` default: `linspace(0, T-1, N+1)` rounded, minus 0."""
    if not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps < timesteps:
        raise ValueError(f"`num_steps` must be an integer in [1, {timesteps - 1}]. "
                         f"Received: num_steps={num_steps!r}")
    return np.round(np.linspace(0, timesteps - 1, num_steps + 1))[::-1][:-1].astype(np.int64)


# ----------------------------------------------------------------------------------------
# Prediction conversions: work on numpy arrays and on tensors alike (arithmetic only).
# ----------------------------------------------------------------------------------------
def x0_from_eps(x_t, eps, signal_rate, noise_rate):
    """`x_0 = (x_t - noise_rate * eps) / signal_rate` (DDIM eq. 12's "predicted x_0")."""
    return (x_t - noise_rate * eps) / signal_rate


def eps_from_x0(x_t, x0, signal_rate, noise_rate):
    """`eps = (x_t - signal_rate * x_0) / noise_rate`."""
    return (x_t - signal_rate * x0) / noise_rate


def velocity(x0, eps, signal_rate, noise_rate):
    """The v-prediction target `v = signal_rate * eps - noise_rate * x_0` (Salimans & Ho)."""
    return signal_rate * eps - noise_rate * x0


def x0_from_velocity(x_t, v, signal_rate, noise_rate):
    """`x_0 = signal_rate * x_t - noise_rate * v` (since signal_rate^2 + noise_rate^2 = 1)."""
    return signal_rate * x_t - noise_rate * v


def eps_from_velocity(x_t, v, signal_rate, noise_rate):
    """`eps = noise_rate * x_t + signal_rate * v`."""
    return noise_rate * x_t + signal_rate * v


# ----------------------------------------------------------------------------------------
# Samplers as tables of coefficients: one row per step, the same update for all of them:
#   x_next = x * x_t + x0 * pred_x0 + eps * pred_eps + prev_x0 * pred_x0_prev + noise * z,
#   z ~ N(0, I), each sampler's rows built from its paper's named quantities.
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StepCoefficients:
    """One sampler step as named numbers: the rates at its timestep and its update weights.

    Attributes:
        signal_rate, noise_rate: sqrt(alpha-bar_t) and sqrt(1 - alpha-bar_t) at the step's
            timestep t, which turn the network's eps or v into `pred_x0`.
        x, x0, eps, prev_x0, noise: the weights of `x_t`, `pred_x0`, `pred_eps`, the previous
            step's `pred_x0` (multistep solvers) and fresh noise `z` in `x_next`.

    The fields hold floats when a plan is built and scalar tensors inside a compiled step
    (`from_row` of a tensor row).
    """

    signal_rate: float
    noise_rate: float
    x: float = 0.0
    x0: float = 0.0
    eps: float = 0.0
    prev_x0: float = 0.0
    noise: float = 0.0

    def to_row(self):
        """float64 `(len(COEFFICIENTS),)`: the fields in `COEFFICIENTS` order (a plan row)."""
        return np.array([getattr(self, name) for name in COEFFICIENTS], dtype=np.float64)

    @classmethod
    def from_row(cls, row):
        """The named view of a plan row: an array or a tensor `(len(COEFFICIENTS),)`."""
        return cls(*(row[i] for i in range(len(COEFFICIENTS))))


# The columns of `SamplingPlan.coefficients`: `StepCoefficients`' fields, in order.
COEFFICIENTS = tuple(field.name for field in dataclasses.fields(StepCoefficients))


@dataclasses.dataclass(frozen=True)
class SamplingPlan:
    """What a sampler does at each step.

    Attributes:
        timesteps: int64 `(K,)`, descending: the timestep of the network call at each step.
        coefficients: float64 `(K, len(COEFFICIENTS))`, one row per step, columns named by
            `COEFFICIENTS` (`StepCoefficients.from_row` gives a row its names).
        stochastic: whether any step adds fresh noise (`noise > 0`).
        multistep: whether any step uses the previous step's `pred_x0` (`prev_x0 != 0`).
    """

    timesteps: np.ndarray
    coefficients: np.ndarray

    @classmethod
    def from_steps(cls, timesteps, steps):
        """A plan from the timesteps `(K,)` and one `StepCoefficients` per step."""
        return cls(np.asarray(timesteps, dtype=np.int64),
                   np.stack([step.to_row() for step in steps]))

    @property
    def stochastic(self):
        return bool(np.any(self.coefficients[:, COEFFICIENTS.index("noise")] > 0))

    @property
    def multistep(self):
        return bool(np.any(self.coefficients[:, COEFFICIENTS.index("prev_x0")] != 0))

    def __len__(self):
        return len(self.timesteps)


def denoising_update(x_t, pred_x0, pred_eps, pred_x0_prev, noise, step):
    """Applies one plan step: `x_next` from the current sample and the model's predictions.

    Args:
        x_t, pred_x0, pred_eps: arrays or tensors `(B, ...)` of one shape.
        pred_x0_prev: the previous step's `pred_x0`, or None where `step.prev_x0` is 0.
        noise: standard normal like `x_t`, or None where `step.noise` is 0.
        step: a `StepCoefficients`, or a plan row (numbers or a float tensor).

    Returns:
        `x_next`, like `x_t` (numpy in, numpy out; tensor in, tensor out).
    """
    if not isinstance(step, StepCoefficients):
        step = StepCoefficients.from_row(step)
    x_next = step.x * x_t + step.x0 * pred_x0 + step.eps * pred_eps
    if pred_x0_prev is not None:
        x_next = x_next + step.prev_x0 * pred_x0_prev
    if noise is not None:
        x_next = x_next + step.noise * noise
    return x_next


class NoiseSchedule:
    """A discrete variance schedule with T steps and its DDPM / DDIM / DPM-Solver++ maths.

    Args:
        kind: a key of `SCHEDULES`: "linear" (Ho et al.) or "cosine" (Nichol & Dhariwal).
        timesteps: T, the number of diffusion steps (>= 2).

    Attributes:
        betas, alphas, alphas_cumprod: float64 `(T,)`, indexed by t = 0 .. T-1.
    """

    def __init__(self, kind="cosine", timesteps=1000):
        if kind not in SCHEDULES:
            raise ValueError(f"`kind` must be one of {tuple(SCHEDULES)}. Received: kind={kind!r}")
        if not isinstance(timesteps, (int, np.integer)) or isinstance(timesteps, bool) \
                or timesteps < 2:
            raise ValueError(f"`timesteps` must be an integer >= 2. Received: timesteps={timesteps!r}")
        self.kind, self.timesteps = kind, int(timesteps)
        self.betas = SCHEDULES[kind](self.timesteps)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = np.cumprod(self.alphas)

    def __repr__(self):
        return f"NoiseSchedule(kind={self.kind!r}, timesteps={self.timesteps})"

    def alpha_bar(self, t):
        """alpha-bar at integer `t` (scalar or array); `t = -1` gives 1.0 (set_alpha_to_one)."""
        t = np.asarray(t)
        return np.where(t >= 0, self.alphas_cumprod[np.maximum(t, 0)], 1.0)

    def rates(self, t):
        """`(signal_rate, noise_rate)` at integer `t`, float64; `t = -1` gives `(1, 0)`."""
        alpha_bar = self.alpha_bar(t)
        return np.sqrt(alpha_bar), np.sqrt(1.0 - alpha_bar)

    def add_noise(self, x0, noise, t):
        """The forward process `q(x_t | x_0)`: `sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise`.

        Args:
            x0, noise: arrays or tensors `(B, ...)` of one float dtype.
            t: int `(B,)`, each in [0, T-1].

        Returns:
            `x_t` with the shape and type of `x0` (numpy in, numpy out; tensor in, tensor out).
        """
        t = np.asarray(t)
        if np.any(t < 0) or np.any(t >= self.timesteps):
            raise ValueError(f"`t` must be in [0, {self.timesteps - 1}]. Received: t={t}")
        signal, noise_rate = self.rates(t)
        shape = (-1,) + (1,) * (len(x0.shape) - 1)
        dtype = x0.dtype if isinstance(x0, np.ndarray) else np.float32
        signal = signal.reshape(shape).astype(dtype)
        noise_rate = noise_rate.reshape(shape).astype(dtype)
        return signal * x0 + noise_rate * noise

    def ddim_timesteps(self, num_steps, spacing="leading"):
        """See `ddim_timesteps`; int64 `(num_steps,)`, descending."""
        return ddim_timesteps(self.timesteps, num_steps, spacing)

    def ddim_step(self, x_t, eps, t, t_prev, eta=0.0, noise=None, clip_sample=False):
        """One DDIM update `x_t -> x_{t_prev}` (Song et al. eq. 12 and 16).

        Args:
            x_t: array or tensor `(B, ...)`, the current sample.
            eps: the predicted noise, same shape.
            t: current integer timestep.
            t_prev: the next entry of the step list; -1 after the last step, which uses
                alpha-bar = 1 (diffusers' `set_alpha_to_one=True`) and so returns `pred_x0`.
            eta: 0 for the deterministic DDIM, 1 for DDPM-like variance.
            noise: standard normal noise of `x_t`'s shape; required when `eta > 0`.
            clip_sample: clip `pred_x0` to [-1, 1] (diffusers' `clip_sample`).

        Returns:
            `x_{t_prev}`, same shape and type as `x_t`.
        """
        if eta > 0 and noise is None:
            raise ValueError(f"`noise` is required when eta > 0. Received: eta={eta}, noise=None")
        step = self._ddim_step_coefficients(t, t_prev, eta)
        pred_x0 = x0_from_eps(x_t, eps, step.signal_rate, step.noise_rate)
        if clip_sample:
            pred_x0 = np.clip(pred_x0, -1, 1) if isinstance(pred_x0, np.ndarray) \
                else _clip(pred_x0)
        return denoising_update(x_t, pred_x0, eps, None, noise if eta > 0 else None, step)

    # -- plans --------------------------------------------------------------------------
    def plan(self, sampler="ddim", steps=50, eta=0.0, spacing=None):
        """The `SamplingPlan` of a sampler.

        Args:
            sampler: "ddim" (`steps` steps, `eta`), "ddpm" (all T steps, Ho et al. eq. 7,
                posterior variance "fixed_small"; `steps` is ignored) or "dpm++"
                (DPM-Solver++ 2M: first and last steps first order, the rest second order).
            steps: number of network calls for "ddim" and "dpm++".
            eta: DDIM's eta in [0, 1].
            spacing: timestep spacing; default "leading" for DDIM (diffusers' DDIM default)
                and diffusers' DPM-Solver default (`dpm_solver_timesteps`) for "dpm++".
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"`sampler` must be one of {SAMPLERS}. Received: sampler={sampler!r}")
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"`eta` must be in [0, 1]. Received: eta={eta}")
        if sampler == "ddpm":
            ts = np.arange(self.timesteps - 1, -1, -1, dtype=np.int64)
            return SamplingPlan.from_steps(ts, [self._ddpm_step_coefficients(t) for t in ts])
        if sampler == "ddim":
            ts = self.ddim_timesteps(steps, spacing or "leading")
            prev = np.append(ts[1:], -1)
            return SamplingPlan.from_steps(ts, [self._ddim_step_coefficients(t, p, eta)
                                                for t, p in zip(ts, prev, strict=True)])
        ts = self.ddim_timesteps(steps, spacing) if spacing else \
            dpm_solver_timesteps(self.timesteps, steps)
        return SamplingPlan.from_steps(ts, self._dpm_solver_steps(ts))

    def _ddim_step_coefficients(self, t, t_prev, eta):
        """DDIM from t to t_prev (Song et al. 2021), in diffusers' `DDIMScheduler.step` names."""
        alpha_prod_t, alpha_prod_t_prev = float(self.alpha_bar(t)), float(self.alpha_bar(t_prev))
        # (16) sigma_t(eta) = eta sqrt((1 - abar_prev) / (1 - abar_t) (1 - abar_t / abar_prev))
        variance = (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) \
            * (1 - alpha_prod_t / alpha_prod_t_prev)
        std_dev_t = eta * math.sqrt(max(variance, 0.0))
        # (12) x_prev = sqrt(abar_prev) pred_x0 + sqrt(1 - abar_prev - sigma_t^2) eps + sigma_t z
        pred_sample_direction = math.sqrt(max(1 - alpha_prod_t_prev - std_dev_t**2, 0.0))
        return StepCoefficients(signal_rate=math.sqrt(alpha_prod_t),
                                noise_rate=math.sqrt(1 - alpha_prod_t),
                                x0=math.sqrt(alpha_prod_t_prev), eps=pred_sample_direction,
                                noise=std_dev_t)

    def _ddpm_step_coefficients(self, t):
        """Ancestral DDPM from t to t-1: Ho et al. (2020) eq. (7), diffusers' `DDPMScheduler`.

        The posterior q(x_{t-1} | x_t, x_0) has mean `pred_original_sample_coeff * x_0 +
        current_sample_coeff * x_t` and variance `beta-tilde_t` ("fixed_small"); no noise at
        t = 0, where the sample is the posterior mean.
        """
        alpha_prod_t, alpha_prod_t_prev = float(self.alpha_bar(t)), float(self.alpha_bar(t - 1))
        beta_t = float(self.betas[t])
        alpha_t = 1 - beta_t
        # (7) mu-tilde_t = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0
        #                  + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t
        pred_original_sample_coeff = math.sqrt(alpha_prod_t_prev) * beta_t / (1 - alpha_prod_t)
        current_sample_coeff = math.sqrt(alpha_t) * (1 - alpha_prod_t_prev) / (1 - alpha_prod_t)
        # (7) beta-tilde_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t
        variance = max((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * beta_t,
                       MIN_POSTERIOR_VARIANCE)
        return StepCoefficients(signal_rate=math.sqrt(alpha_prod_t),
                                noise_rate=math.sqrt(1 - alpha_prod_t),
                                x=current_sample_coeff, x0=pred_original_sample_coeff,
                                noise=math.sqrt(variance) if t > 0 else 0.0)

    def _dpm_solver_steps(self, ts):
        """DPM-Solver++(2M) over `ts` then t = -1: Lu et al. (2022) Algorithm 2, line by line.

        In diffusers' names (`DPMSolverMultistepScheduler`, midpoint, data prediction): step i
        goes from s0 = ts[i] to t = ts[i + 1] (or -1), s1 = ts[i - 1] is the step before, with
        `alpha`, `sigma` the signal and noise rates and `lambda = log(alpha / sigma)`.
        Returns one `StepCoefficients` per entry of `ts`.
        """
        alpha, sigma = self.rates(ts)
        lambda_ = np.log(alpha) - np.log(sigma)
        steps = []
        for i in range(len(ts)):
            alpha_s0, sigma_s0 = alpha[i], sigma[i]
            if i == len(ts) - 1:
                # Line 4's first-order form into t = -1 (sigma_t = 0, alpha_t = 1, h = inf):
                # x_t = x_theta exactly (diffusers' lower-order final step, sigma zero).
                steps.append(StepCoefficients(alpha_s0, sigma_s0, x0=1.0))
                continue
            alpha_t, sigma_t = alpha[i + 1], sigma[i + 1]
            h = lambda_[i + 1] - lambda_[i]  # line 1: h_i = lambda_t - lambda_s0
            phi = -alpha_t * np.expm1(-h)  # -alpha_t (e^{-h} - 1)
            if i == 0:
                # Line 4, first order (DDIM): x_t = sigma_t / sigma_s0 x - alpha_t (e^-h - 1) x0_s0
                steps.append(StepCoefficients(alpha_s0, sigma_s0, x=sigma_t / sigma_s0, x0=phi))
                continue
            r = (lambda_[i] - lambda_[i - 1]) / h  # line 7: r_i = h_{i-1} / h_i
            # Line 8: D_i = (1 + 1/(2 r_i)) x0_s0 - 1/(2 r_i) x0_s1
            # Line 9: x_t = sigma_t / sigma_s0 x - alpha_t (e^{-h} - 1) D_i
            steps.append(StepCoefficients(alpha_s0, sigma_s0, x=sigma_t / sigma_s0,
                                          x0=phi * (1 + 0.5 / r), prev_x0=-phi * 0.5 / r))
        return steps


def _clip(tensor):
    from keras import ops

    return ops.clip(tensor, -1.0, 1.0)
