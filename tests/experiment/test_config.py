"""Tests for lungkit.experiment.config: overrides reach nested sections, errors name the bad value."""

import pytest

from lungkit import experiment
from lungkit.experiment.config import MODEL_NAMES


def test_config_overrides_reach_nested_sections():
    config = experiment.get_config("quick", **{"vae.epochs": 3, "image_size": 64})
    assert config.vae.epochs == 3 and config.image_size == 64
    assert experiment.PRESETS["quick"].vae.epochs != 3  # presets stay frozen
    paper = experiment.get_config("paper")
    assert (paper.image_size, paper.vae.epochs, paper.denoiser.epochs) == (128, 200, 10)
    classes = experiment.get_config("classes")
    assert classes.conditional and classes.image_size == 64
    assert set(classes.models) == set(MODEL_NAMES)


@pytest.mark.parametrize(
    "overrides, match",
    [({"models": ("vae", "gan")}, "subset of"), ({"test_fraction": 1.5}, "test_fraction"),
     ({"channels": 2}, "channels"), ({"nope.epochs": 1}, "Unknown config section"),
     ({"classifier_steps": 0}, r"`classifier_steps` must be an integer >= 1. Received: "
                               r"classifier_steps=0"),
     ({"tstr_steps": 2.5}, "`tstr_steps` must be an integer >= 1"),
     ({"strategy": "multiworker"}, r"`strategy` must be one of .*Received: strategy='multiworker'"),
     ({"precision": "float16"}, r"`precision` must be one of .*Received: precision='float16'")],
)
def test_config_errors_name_the_bad_value(overrides, match):
    with pytest.raises(ValueError, match=match):
        experiment.get_config("quick", **overrides)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="paper"):
        experiment.get_config("huge")
