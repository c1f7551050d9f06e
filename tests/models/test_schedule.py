"""Tests for lungkit.models.schedule: the diffusion maths as pure numpy functions.

The golden loops pin whole seeded sampling runs (as diffusers' and MONAI's scheduler tests
do) to numbers stored from a known-good version of the code, so that any change to a
coefficient, a timestep list or the update rule fails here even where the closed-form tests
elsewhere do not look.
"""

import numpy as np
import pytest

from lungkit.models.schedule import NoiseSchedule, denoising_update, x0_from_eps

MU, STD = 0.2, 0.3  # per-pixel Gaussian "data" x0 ~ N(MU, STD^2)


def _gaussian_eps(x_t, abar):
    """The exact E[eps | x_t] for Gaussian data: sqrt(1-a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a)."""
    return np.sqrt(1 - abar) * (x_t - np.sqrt(abar) * MU) / (abar * STD**2 + 1 - abar)


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
