"""The comparison experiment: one split, every model, one report.

- `lungkit.experiment.config`: the settings (`ExperimentConfig`, `PRESETS`, `get_config`).
- `lungkit.experiment.runners`: train and sample one model (`train_and_sample`).
- `lungkit.experiment.claims`: the paper's claims, checked (`check_claims`).
- `lungkit.experiment.report`: report.md, report.html and the figures.
- `lungkit.experiment.compare`: `compare(config, out_dir)`, all of the above in one run.

Importing it loads no TensorFlow: models and metrics are imported when a run starts.
"""

from lungkit.experiment.compare import compare, load_split, split_indices
from lungkit.experiment.config import (
    PRESETS,
    DenoiserConfig,
    DiffusionConfig,
    ExperimentConfig,
    LatentConfig,
    VAEConfig,
    get_config,
)

__all__ = ["PRESETS", "DenoiserConfig", "DiffusionConfig", "ExperimentConfig",
           "LatentConfig", "VAEConfig", "compare", "get_config", "load_split",
           "split_indices"]
