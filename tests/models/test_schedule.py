"""Tests for lungkit.models.schedule: the diffusion maths as pure numpy functions.

Reference values come from closed forms computed here independently of the library code
(the papers' formulas written out again), never from the code under test. The golden loops
pin whole seeded sampling runs (as diffusers' and MONAI's scheduler tests do) to numbers
stored from a known-good version of the code, so that any change to a coefficient, a
timestep list or the update rule fails there even where the closed-form tests do not look.
"""

import math

import numpy as np
import pytest
from keras import ops

from lungkit.models.schedule import (
    COEFFICIENTS,
    SCHEDULES,
    NoiseSchedule,
    ddim_timesteps,
    denoising_update,
    eps_from_velocity,
    velocity,
    x0_from_eps,
    x0_from_velocity,
)

T = 1000
MU, STD = 0.2, 0.3  # per-pixel Gaussian "data" x0 ~ N(MU, STD^2)


def _gaussian_eps(x_t, abar):
    """The exact E[eps | x_t] for Gaussian data: sqrt(1-a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a)."""
    return np.sqrt(1 - abar) * (x_t - np.sqrt(abar) * MU) / (abar * STD**2 + 1 - abar)


# ---------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("kind", sorted(SCHEDULES))
def test_schedule_is_monotone_and_bounded(kind):
    schedule = NoiseSchedule(kind, T)
    for name in ("betas", "alphas", "alphas_cumprod"):
        values = getattr(schedule, name)
        assert values.dtype == np.float64 and values.shape == (T,)
    assert np.all(np.diff(schedule.betas) >= 0)
    assert np.all(np.diff(schedule.alphas_cumprod) < 0)
    assert np.all((schedule.betas > 0) & (schedule.betas <= 0.999))
    np.testing.assert_allclose(schedule.alphas, 1 - schedule.betas)
    assert 0.999 < schedule.alphas_cumprod[0] < 1 and schedule.alphas_cumprod[-1] < 1e-4


def test_linear_schedule_endpoints_and_final_alpha_bar():
    schedule = NoiseSchedule("linear", T)
    assert schedule.betas[0] == pytest.approx(1e-4) and schedule.betas[-1] == pytest.approx(0.02)
    # alpha-bar_T = prod(1 - beta) = exp(sum log(1 - beta)) ~ 4.04e-5 for DDPM's schedule.
    betas = [1e-4 + (0.02 - 1e-4) * i / (T - 1) for i in range(T)]
    expected = math.exp(sum(math.log1p(-b) for b in betas))
    assert schedule.alphas_cumprod[-1] == pytest.approx(expected, rel=1e-9)
    assert schedule.alphas_cumprod[-1] == pytest.approx(4.0358e-5, rel=1e-4)


def test_cosine_schedule_matches_closed_form():
    schedule = NoiseSchedule("cosine", T)

    def f(t):  # Nichol & Dhariwal eq. (17), unnormalised
        return math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = np.array([min(1 - f(i + 1) / f(i), 0.999) for i in range(T)])
    np.testing.assert_allclose(schedule.betas, betas, rtol=1e-12, atol=1e-15)
    assert schedule.betas[-1] == 0.999  # f(T) ~ 0, so the last beta is capped
    # Where no beta is capped the product telescopes: alpha-bar_t = f(t + 1) / f(0).
    unclipped = int(np.argmax(betas >= 0.999))
    assert unclipped == T - 1
    closed = np.array([f(t + 1) / f(0) for t in range(unclipped)])
    np.testing.assert_allclose(schedule.alphas_cumprod[:unclipped], closed, rtol=1e-5)


def test_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="`kind` must be one of"):
        NoiseSchedule("quadratic")
    with pytest.raises(ValueError, match="`timesteps` must be an integer >= 2"):
        NoiseSchedule("linear", 1)


def test_add_noise_mean_and_variance():
    schedule = NoiseSchedule("linear", T)
    rng = np.random.default_rng(0)
    x0 = np.full((4, 200, 200, 1), 0.7)
    noise = rng.standard_normal(x0.shape)
    t = np.array([0, 100, 500, 999])
    x_t = schedule.add_noise(x0, noise, t)
    abar = np.array([np.prod(1 - schedule.betas[: i + 1]) for i in t])
    np.testing.assert_allclose(x_t.mean(axis=(1, 2, 3)), np.sqrt(abar) * 0.7, atol=0.01)
    np.testing.assert_allclose(x_t.var(axis=(1, 2, 3)), 1 - abar, rtol=0.03, atol=2e-4)
    tensor = schedule.add_noise(ops.convert_to_tensor(x0[:, :8, :8].astype("float32")),
                                ops.convert_to_tensor(noise[:, :8, :8].astype("float32")), t)
    np.testing.assert_allclose(ops.convert_to_numpy(tensor), x_t[:, :8, :8], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"`t` must be in \[0, 999\]"):
        schedule.add_noise(x0, noise, np.array([0, 1, 2, 1000]))


def test_ddim_timesteps_leading_and_trailing():
    np.testing.assert_array_equal(ddim_timesteps(T, 50, "leading"), np.arange(980, -1, -20))
    np.testing.assert_array_equal(ddim_timesteps(T, 50, "trailing"), np.arange(999, 0, -20))
    np.testing.assert_array_equal(ddim_timesteps(T, 7, "leading"),
                                  [852, 710, 568, 426, 284, 142, 0])
    trailing = ddim_timesteps(T, 7, "trailing")  # round(1000 - k * 1000/7) - 1
    np.testing.assert_array_equal(trailing, [999, 856, 713, 570, 428, 285, 142])
    # The known bug, prev = t - T // steps, disagrees with the list itself for "trailing".
    assert trailing[0] - T // 7 != trailing[1]
    np.testing.assert_array_equal(NoiseSchedule("linear", T).ddim_timesteps(7, "trailing"),
                                  trailing)
    with pytest.raises(ValueError, match="`spacing` must be one of"):
        ddim_timesteps(T, 7, "uniform")
    with pytest.raises(ValueError, match=r"`num_steps` must be an integer in \[1, 1000\]"):
        ddim_timesteps(T, 0)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ddim_step_with_exact_noise_follows_the_forward_process(kind):
    schedule = NoiseSchedule(kind, T)
    rng = np.random.default_rng(1)
    x0 = rng.uniform(-1, 1, (2, 8, 8, 3))
    noise = rng.standard_normal(x0.shape)
    x_t = schedule.add_noise(x0, noise, np.array([700, 700]))
    # One deterministic step to t_prev = -1 (alpha-bar = 1) returns x0 exactly...
    np.testing.assert_allclose(schedule.ddim_step(x_t, noise, 700, -1), x0, atol=1e-6)
    # ...and a step to any t_prev lands on the forward process at t_prev with the same noise.
    np.testing.assert_allclose(schedule.ddim_step(x_t, noise, 700, 300),
                               schedule.add_noise(x0, noise, np.array([300, 300])), atol=1e-9)
    with pytest.raises(ValueError, match="`noise` is required when eta > 0"):
        schedule.ddim_step(x_t, noise, 700, 300, eta=1.0)


def test_ddim_eta_one_variance_is_the_ddpm_posterior_variance():
    schedule = NoiseSchedule("linear", T)
    ddim = schedule.plan("ddim", steps=T, eta=1.0)
    ddpm = schedule.plan("ddpm")
    np.testing.assert_array_equal(ddim.timesteps, ddpm.timesteps)
    noise = COEFFICIENTS.index("noise")
    np.testing.assert_allclose(ddim.coefficients[:-1, noise], ddpm.coefficients[:-1, noise],
                               rtol=1e-9)


def test_ddpm_step_is_ho_et_al_eq_11():
    schedule = NoiseSchedule("cosine", T)
    plan = schedule.plan("ddpm")
    rng = np.random.default_rng(2)
    x_t, eps = rng.standard_normal((2, 4, 4, 1))
    for k in (0, 500, 998):
        t, row = plan.timesteps[k], plan.coefficients[k]
        x0 = x0_from_eps(x_t, eps, row[0], row[1])
        mean = denoising_update(x_t, x0, eps, None, None, row)
        beta, abar = schedule.betas[t], np.prod(1 - schedule.betas[: t + 1])
        # mu = (x_t - beta_t / sqrt(1 - abar_t) * eps) / sqrt(alpha_t)
        expected = (x_t - beta / np.sqrt(1 - abar) * eps) / np.sqrt(1 - beta)
        np.testing.assert_allclose(mean, expected, rtol=1e-7, atol=1e-9)
    assert plan.coefficients[-1, COEFFICIENTS.index("noise")] == 0  # no noise at t = 0


def test_prediction_conversions_round_trip():
    rng = np.random.default_rng(3)
    x0, eps = rng.standard_normal((2, 5))
    signal, noise = math.sqrt(0.3), math.sqrt(0.7)
    x_t = signal * x0 + noise * eps
    v = velocity(x0, eps, signal, noise)
    np.testing.assert_allclose(x0_from_velocity(x_t, v, signal, noise), x0)
    np.testing.assert_allclose(eps_from_velocity(x_t, v, signal, noise), eps)
    np.testing.assert_allclose(x0_from_eps(x_t, eps, signal, noise), x0)


# ---------------------------------------------------------------------------- DPM-Solver++
def _log_snr(schedule, t):
    abar = np.prod(1 - schedule.betas[: t + 1])
    return math.log(math.sqrt(abar)) - math.log(math.sqrt(1 - abar)), abar


def test_dpm_solver_2m_update_matches_lu_et_al_algorithm_2():
    schedule = NoiseSchedule("cosine", T)
    plan = schedule.plan("dpm++", steps=20)
    np.testing.assert_array_equal(plan.timesteps, np.round(np.linspace(0, 999, 21))[::-1][:-1])
    rng = np.random.default_rng(4)
    x, x0_now, x0_before = rng.standard_normal((3, 6))
    i = 6  # a second-order step: t_{i-1} = timesteps[i - 1], t_i = timesteps[i] -> t_{i+1}
    (lam_prev, _), (lam_s, abar_s), (lam_t, abar_t) = (
        _log_snr(schedule, plan.timesteps[j]) for j in (i - 1, i, i + 1))
    h, r = lam_t - lam_s, (lam_s - lam_prev) / (lam_t - lam_s)
    d = (1 + 1 / (2 * r)) * x0_now - 1 / (2 * r) * x0_before
    expected = (math.sqrt(1 - abar_t) / math.sqrt(1 - abar_s) * x
                - math.sqrt(abar_t) * (math.exp(-h) - 1) * d)
    update = denoising_update(x, x0_now, 0.0, x0_before, None, plan.coefficients[i])
    np.testing.assert_allclose(update, expected, rtol=1e-9)
    # The first step is first order, i.e. exactly a DDIM step; the last returns pred_x0.
    signal_rate, noise_rate = schedule.rates(plan.timesteps[0])
    eps = (x - signal_rate * x0_now) / noise_rate
    np.testing.assert_allclose(denoising_update(x, x0_now, 0.0, None, None, plan.coefficients[0]),
                               schedule.ddim_step(x, eps, plan.timesteps[0], plan.timesteps[1]),
                               rtol=1e-6)
    np.testing.assert_allclose(denoising_update(x, x0_now, 0.0, x0_before, None,
                                                plan.coefficients[-1]), x0_now)


def _run_plan(schedule, plan, x, stop=None):
    prev = None
    for k, t in enumerate(plan.timesteps[:stop]):
        row = plan.coefficients[k]
        eps = _gaussian_eps(x, schedule.alphas_cumprod[t])
        pred_x0 = x0_from_eps(x, eps, row[0], row[1])
        x, prev = denoising_update(x, pred_x0, eps, prev, None, row), pred_x0
    return x


def test_dpm_solver_samples_gaussian_data_better_than_ddim_50():
    schedule = NoiseSchedule("cosine", T)
    x_T = np.random.default_rng(5).standard_normal(100_000)
    dpm = schedule.plan("dpm++", steps=20)
    ddim = schedule.plan("ddim", steps=50, spacing="linspace")
    # Before its final jump to t = -1 the 2M solver tracks the exact marginal N(a mu, a s^2 + 1 - a).
    abar = schedule.alphas_cumprod[dpm.timesteps[-1]]
    before = _run_plan(schedule, dpm, x_T, stop=-1)
    assert before.mean() == pytest.approx(np.sqrt(abar) * MU, abs=0.005)
    assert before.std() == pytest.approx(np.sqrt(abar * STD**2 + 1 - abar), rel=0.02)
    samples = _run_plan(schedule, dpm, x_T)
    assert samples.mean() == pytest.approx(MU, abs=0.005)
    assert samples.std() == pytest.approx(STD, rel=0.05)
    ddim_samples = _run_plan(schedule, ddim, x_T)
    assert abs(samples.std() - STD) < abs(ddim_samples.std() - STD)


# ---------------------------------------------------------------------------- golden loops
def _golden_loop(schedule, plan, seed):
    """A full sampling loop on a `(1, 4, 4, 1)` array through public functions only."""
    rng = np.random.default_rng(seed)
    x, prev = rng.standard_normal((1, 4, 4, 1)), None
    for t, row in zip(plan.timesteps, plan.coefficients, strict=True):
        eps = _gaussian_eps(x, schedule.alphas_cumprod[t])
        pred_x0 = x0_from_eps(x, eps, row[0], row[1])
        noise = rng.standard_normal(x.shape) if plan.stochastic else None
        x, prev = denoising_update(x, pred_x0, eps, prev, noise, row), pred_x0
    return x


# (kind, T, sampler, steps, eta, seed) -> (sum, mean |x|, x.flat[0], x.flat[5], x.flat[15]),
# stored from the code before the coefficients were rebuilt from named step quantities.
GOLDEN_LOOPS = {
    ("linear", 100, "ddim", 10, 0.0, 0): (
        1.0518185698030194, 0.243243690027379,
        0.19802387329732826, 0.2776595477024995, -0.09166414199985636),
    ("cosine", 100, "ddim", 10, 0.5, 1): (
        2.4871992531829337, 0.16860932462123068,
        0.26138431539621254, 0.25473107688809654, -0.035472581292634406),
    ("cosine", 100, "dpm++", 15, 0.0, 2): (
        3.1539412073131503, 0.2577082634895705,
        0.2516936416295808, 0.5129901917976737, 0.17283475754338),
    ("linear", 50, "ddpm", None, 0.0, 3): (
        3.910100095551648, 0.3431222572639785,
        0.5279328000739217, 0.6700598410632245, 0.18045016516021334),
}


@pytest.mark.parametrize("case", list(GOLDEN_LOOPS), ids=lambda case: f"{case[2]}-eta{case[4]}")
def test_golden_sampling_loop(case):
    kind, timesteps, sampler, steps, eta, seed = case
    schedule = NoiseSchedule(kind, timesteps)
    x = _golden_loop(schedule, schedule.plan(sampler, steps, eta), seed)
    # One comparison for all five numbers, so a failure shows how many moved.
    measured = [x.sum(), np.abs(x).mean(), *x.ravel()[[0, 5, 15]]]
    np.testing.assert_allclose(measured, GOLDEN_LOOPS[case], rtol=0, atol=1e-5)
