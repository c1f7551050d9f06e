"""The comparison experiment: one split, every model, one report.

`compare(config)` loads a dataset (the phantom set by default), holds out a stratified test
split and a split of its own for the domain encoder (`load_split`), builds the named feature
spaces (`feature_spaces`: every FID/KID number says which one it comes from) and checks them
with the sanity probes (`lungkit.evaluation.probes`), trains the paper's VAE, the paper's U-Net denoiser and a true DDPM (and, when asked,
the latent hybrid) under one config, times training and generation, evaluates every model's
samples against the held-out real images with `lungkit.evaluation.metrics.evaluate`, checks the paper's
claims against the measured numbers and writes the report (`lungkit.experiment.report`). Training and
sampling each model is `lungkit.experiment.runners.train_and_sample`.

With `conditional=True` the VAE, the DDPM and the latent hybrid are class-conditional (Sohn
et al., 2015; Ho & Salimans, 2022): they generate `n_generate` samples split evenly over Normal / Benign /
Malignant, scored for class fidelity (a classifier trained on the real training split) and
train-on-synthetic-test-on-real accuracy.

Settings are the frozen dataclasses of `lungkit.experiment.config`; the claims are checked by
`lungkit.experiment.claims`.
"""

import logging
import os
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from lungkit.data.labels import class_counts, labels_from_counts
from lungkit.experiment.claims import check_claims
from lungkit.experiment.config import get_config
from lungkit.experiment.runners import train_and_sample
from lungkit.files import write_json

logger = logging.getLogger(__name__)

CLAIM_SPACE = "random_cnn"  # the claims' feature space: trained on nothing, so no split tunes it
PROBE_ROUNDS = 300  # bootstrap resamples per sanity probe (8 probes x every feature space)


def split_indices(labels, test_fraction, seed=0):
    """Stratified train/test split of `labels` (int array); returns two sorted index arrays."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_test = max(1, int(round(len(idx) * test_fraction))) if len(idx) > 1 else 0
        test.extend(idx[:n_test])
        train.extend(idx[n_test:])
    return np.sort(np.asarray(train, dtype=int)), np.sort(np.asarray(test, dtype=int))


class Split(NamedTuple):
    """The three disjoint parts of the data: generator training, held-out test, encoder."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    encoder_x: np.ndarray  # the domain encoder's own slices: no generator or metric sees them
    encoder_y: np.ndarray
    info: dict


def load_split(config, out_dir):
    """Loads the configured dataset and splits it (stratified, seeded) into a `Split`.

    `config.test_fraction` of the slices are held out for the metrics, `config.encoder_fraction`
    go to the domain encoder alone, the rest train the generators.
    """
    from lungkit.data.images import load_data, normalize, to_channels
    from lungkit.data.sources import resolve_data_dir

    source = "user data" if config.data_dir else "phantom"
    data_dir = resolve_data_dir(config.data_dir, root=Path(out_dir) / "data",
                                phantom_per_class=config.phantom_per_class, seed=config.seed)
    images, labels = load_data(data_dir, size=config.image_size, limit=config.limit)
    images = to_channels(normalize(images), config.channels)
    rest_idx, test_idx = split_indices(labels, config.test_fraction, config.seed)
    train_idx, encoder_idx = rest_idx, np.zeros(0, dtype=int)
    if config.encoder_fraction > 0:  # a share of all slices, taken from the non-test part
        fraction = config.encoder_fraction / (1.0 - config.test_fraction)
        train_part, encoder_part = split_indices(labels[rest_idx], fraction, config.seed + 1)
        train_idx, encoder_idx = rest_idx[train_part], rest_idx[encoder_part]
    info = {
        "source": source,
        "data_dir": str(data_dir),
        "n_images": int(len(images)),
        "n_train": int(len(train_idx)),
        "n_test": int(len(test_idx)),
        "n_encoder": int(len(encoder_idx)),
        "class_counts": class_counts(labels),
    }
    logger.info("Data: %s, %d images (%d train / %d held out / %d for the domain encoder), "
                "classes %s", data_dir, info["n_images"], info["n_train"], info["n_test"],
                info["n_encoder"], info["class_counts"])
    return Split(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx],
                 images[encoder_idx], labels[encoder_idx], info)


def feature_spaces(config, split, cache_dir):
    """The named extractors of every FID/KID number (`build_extractors` on the encoder split).

    `config.features`: "auto" keeps all that exist, "domain" drops InceptionV3, "inception"
    requires it. The domain encoder joins, and the untrained spaces are standardized, when the
    encoder split holds at least 2 slices.
    """
    from lungkit.evaluation.extractors import build_extractors

    return build_extractors(split.encoder_x, split.encoder_y, size=config.image_size,
                            channels=config.channels, seed=config.seed, cache_dir=cache_dir,
                            features=config.features, progress=True)


def compare(config=None, out_dir=None, progress=True):
    """Runs the comparison experiment and writes its report.

    Run again into the same `out_dir` (after a crash, or with sampling settings changed), it
    loads the models whose training finished there with the same settings and data (see
    `lungkit.experiment.runners.training_fingerprint`), resumes the one in progress from its backup,
    and trains the rest.

    Args:
        config: an `ExperimentConfig` (default: the "quick" preset) or a preset name.
        out_dir: folder for models, logs, figures and the report (default `runs/<name>`).
        progress: show progress bars while sampling.

    Returns:
        The results dict also written to `out_dir/metrics.json`.
    """
    from lungkit.evaluation import metrics
    from lungkit.evaluation.probes import run_probes
    from lungkit.evaluation.statistics import rank_agreement
    from lungkit.experiment import report

    if config is None or isinstance(config, str):
        config = get_config(config or "quick")
    out_dir = Path(out_dir or Path("runs") / config.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()

    split = load_split(config, out_dir)
    train_x, train_y, test_x, test_y = split[:4]
    extractors = feature_spaces(config, split, out_dir / "features")
    real_stats = {space: metrics.FeatureStats.from_images(test_x, extractor, out_dir / "features")
                  for space, extractor in extractors.items()}
    names = {space: extractor.name for space, extractor in extractors.items()}
    results = {"config": config.to_dict(), "data": split.info, "machine": machine_info(),
               "feature_extractor": names[CLAIM_SPACE], "feature_extractors": names,
               "claim_space": CLAIM_SPACE, "models": {}}
    evidence = {"feature_extractor": names[CLAIM_SPACE],
                "features": {"real": real_stats[CLAIM_SPACE].features},
                "sharpness": {}, "similarity": {}}
    scoring = dict(test=test_x, train=train_x, extractors=extractors, real_stats=real_stats)
    classifier, class_options = None, {}
    if config.conditional:
        classifier = _class_classifier(config, train_x, train_y, out_dir / "features", progress)
        held_out = metrics.class_fidelity(test_x, test_y, classifier)
        results["classifier"] = {"name": classifier.name, "members": config.classifier_members,
                                 "steps": config.classifier_steps,
                                 "test_accuracy": held_out["accuracy"],
                                 "test_accuracy_per_class": held_out["per_class"]}
        class_options = {"classifier": classifier, "real_labels": test_y}
    samples = {}
    for model_name in config.models:
        logger.info("=== %s ===", model_name)
        entry, model_samples = train_and_sample(
            model_name, config, train_x, train_y, out_dir / model_name, progress=progress
        )
        for control in [name for name in model_samples if name not in entry["variants"]]:
            evidence["similarity"][control] = metrics.memorization(  # controls: claims only
                model_samples.pop(control), scoring["train"])["similarity"]
        samples.update(model_samples)
        for variant, images in model_samples.items():
            if entry["variants"][variant].get("evaluate", True):
                _score_variant(entry["variants"][variant], images, config, scoring,
                               class_options, evidence, variant)
        results["models"][model_name] = entry
        _write_json(results, out_dir / "metrics.json")  # nothing lost if a later model fails

    results["real_metrics"] = _reference_row(config, train_x, train_y, test_y, scoring,
                                             results.get("classifier"), evidence)
    results["probes"] = run_probes(test_x, test_y, train_x, extractors, seed=config.seed,
                                   rounds=PROBE_ROUNDS)
    results["extractor_agreement"] = rank_agreement(
        {space: {v["label"]: v["metrics"].get(metrics.feature_key("kid", space))
                 for e in results["models"].values() for v in e["variants"].values()
                 if v.get("metrics")} for space in extractors})
    results["claims"] = check_claims(results, evidence)
    results["wall_seconds"] = time.time() - started
    _write_json(results, out_dir / "metrics.json")
    report.write_report(results, samples, (train_x, train_y), out_dir)
    logger.info("Report written to %s (%.0f s)", out_dir / "report.html", results["wall_seconds"])
    return results


def _score_variant(info, images, config, scoring, class_options, evidence, variant):
    """`evaluate`s one sampler's images into `info["metrics"]` and keeps the per-image arrays
    it computed (sharpness, claim-space features, nearest-training similarity) in `evidence`
    for the claims."""
    from lungkit.evaluation import metrics

    labels = None
    if info.get("conditional") and class_options:
        labels = labels_from_counts(info["class_counts"])
    info["metrics"], arrays = metrics.evaluate(
        images, scoring["test"], train=scoring["train"], features=scoring["extractors"],
        real_stats=scoring["real_stats"], seed=config.seed, generated_labels=labels,
        tstr_steps=config.tstr_steps, return_arrays=True,
        **(class_options if labels is not None else {}),
    )
    evidence["sharpness"][variant] = arrays["sharpness"]
    evidence["features"][variant] = arrays["features"][CLAIM_SPACE]
    evidence["similarity"][variant] = arrays["similarity"]
    evidence["sharpness"].setdefault("real", arrays["sharpness_real"])  # the same every call
    evidence["similarity"].setdefault("real", arrays["similarity_real"])


def _reference_row(config, train_x, train_y, test_y, scoring, classifier, evidence):
    """Real training slices scored like samples, at the models' n (what a perfect model gets),
    drawn at random: the training arrays are ordered by class."""
    from lungkit.evaluation import metrics

    pick = np.sort(np.random.default_rng(config.seed).choice(
        len(train_x), size=min(config.n_generate, len(train_x)), replace=False))
    row, arrays = metrics.evaluate(
        train_x[pick], scoring["test"], train=None, features=scoring["extractors"],
        real_stats=scoring["real_stats"], seed=config.seed,
        generated_labels=train_y[pick] if classifier else None,
        real_labels=test_y if classifier else None, tstr_steps=config.tstr_steps,
        return_arrays=True,
    )
    evidence["features"]["reference"] = arrays["features"][CLAIM_SPACE]
    if classifier is not None:  # what held-out real slices score: the ceiling of fidelity
        row["class_fidelity"] = classifier["test_accuracy"]
        row["class_fidelity_per_class"] = classifier["test_accuracy_per_class"]
    return row


def machine_info():
    """What the timings ran on: CPU model and cores, GPUs, Python, TensorFlow and Keras."""
    import platform

    import keras
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "gpus": [gpu.name for gpu in tf.config.list_physical_devices("GPU")],
            "tensorflow": tf.__version__, "keras": keras.__version__}


def _class_classifier(config, train_x, train_y, cache_dir, progress):
    """The classifier that scores class fidelity: `config.classifier_members` of lungkit's CT
    classifiers trained on the real training split for `config.classifier_steps` steps each,
    their probabilities averaged (cached under `cache_dir`)."""
    from lungkit.evaluation.classifier import load_or_train_classifier

    return load_or_train_classifier(train_x, train_y, cache_dir, steps=config.classifier_steps,
                                    members=config.classifier_members, seed=config.seed,
                                    progress=progress)


def _write_json(data, path):
    write_json(path, data, default=_json_default)  # atomic: lungkit.files


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
