"""Training: `tf.distribute` strategies and precision, resumable `fit`, the callbacks.

- `lungkit.training.strategy`: `get_strategy`, `set_precision`, `is_chief`.
- `lungkit.training.loop`: `train`, `fit`, `distributed_fit` (multi-worker), `ensure_built`.
- `lungkit.training.callbacks`: the callbacks of a resumable run, the only code that reads
  and writes a run's backups and history rows.
"""

from lungkit.training.callbacks import (
    BACKUP_DIR,
    HISTORY_FILE,
    FriendlyTerminateOnNaN,
    ShuffleEpoch,
    TimingCallback,
    default_callbacks,
    read_history,
    restore_rng_states,
    resume_epoch,
    save_rng_states,
    trim_history,
)
from lungkit.training.loop import TrainingHistory, distributed_fit, ensure_built, fit, train
from lungkit.training.strategy import (
    PRECISIONS,
    STRATEGIES,
    get_strategy,
    is_chief,
    is_multiworker,
    set_precision,
)

__all__ = [
    "BACKUP_DIR", "HISTORY_FILE", "PRECISIONS", "STRATEGIES", "FriendlyTerminateOnNaN",
    "ShuffleEpoch", "TimingCallback", "TrainingHistory", "default_callbacks",
    "distributed_fit", "ensure_built", "fit", "get_strategy", "is_chief", "is_multiworker",
    "read_history", "restore_rng_states", "resume_epoch", "save_rng_states", "set_precision",
    "train", "trim_history",
]
