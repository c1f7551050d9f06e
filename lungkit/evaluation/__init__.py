"""Evaluation: what the samples are worth, measured against real slices.

- `lungkit.evaluation.common`: image checks, resizing, batching, the extractor interface.
- `lungkit.evaluation.classifier`: the small CT classifier (class fidelity, TSTR).
- `lungkit.evaluation.domain_encoder`: FID/KID features learned from real CT slices.
- `lungkit.evaluation.features`: InceptionV3 features and the choice of extractor.
- `lungkit.evaluation.distances`: FeatureStats, FID, KID, precision/recall.
- `lungkit.evaluation.metrics`: sharpness, diversity, memorization, class fidelity, and
  `evaluate`, all of them at once.
- `lungkit.evaluation.statistics`: bootstrap intervals and verdicts (numpy only: importable
  without TensorFlow, as `lungkit.experiment` is).
"""
