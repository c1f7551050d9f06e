"""Tests for lungkit.training.strategy: strategy names and errors, the precision policy."""

import keras
import pytest
import tensorflow as tf

from lungkit.training import strategy


def test_get_strategy_names_and_errors(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    for var in strategy.TPU_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    assert strategy.get_strategy("auto") is tf.distribute.get_strategy()  # 1 CPU, no TPU
    assert isinstance(strategy.get_strategy("cpu"), tf.distribute.OneDeviceStrategy)
    mirrored = strategy.get_strategy("mirrored")
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert strategy.get_strategy(mirrored) is mirrored
    with pytest.raises(ValueError, match=r"`strategy` must be one of .*'multiworker'.*gpu"):
        strategy.get_strategy("gpu")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        strategy.get_strategy("auto")


def test_set_precision_returns_previous_and_rejects_unknown():
    assert strategy.set_precision("mixed_bfloat16") == "float32"
    try:
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
    finally:
        assert strategy.set_precision("float32") == "mixed_bfloat16"
    with pytest.raises(ValueError, match=r"`precision` must be one of .*Received: precision='fp8'"):
        strategy.set_precision("fp8")
