"""The comparison experiment: one split, every model, one report.

`compare(config)` loads a dataset (the phantom set by default), holds out a stratified test
split, trains the paper's VAE, the paper's U-Net denoiser and a true DDPM (and, when asked,
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

import numpy as np

from lungkit.data.labels import class_counts, labels_from_counts
from lungkit.experiment.claims import check_claims
from lungkit.experiment.config import get_config
from lungkit.experiment.runners import train_and_sample
from lungkit.files import write_json

logger = logging.getLogger(__name__)


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


def load_split(config, out_dir):
    """Loads the configured dataset and returns `(train_x, train_y, test_x, test_y, info)`."""
    from lungkit.data.images import load_data, normalize, to_channels
    from lungkit.data.sources import resolve_data_dir

    source = "user data" if config.data_dir else "phantom"
    data_dir = resolve_data_dir(config.data_dir, root=Path(out_dir) / "data",
                                phantom_per_class=config.phantom_per_class, seed=config.seed)
    images, labels = load_data(data_dir, size=config.image_size, limit=config.limit)
    images = to_channels(normalize(images), config.channels)
    train_idx, test_idx = split_indices(labels, config.test_fraction, config.seed)
    info = {
        "source": source,
        "data_dir": str(data_dir),
        "n_images": int(len(images)),
        "n_train": int(len(train_idx)),
        "n_test": int(len(test_idx)),
        "class_counts": class_counts(labels),
    }
    logger.info("Data: %s, %d images (%d train / %d held out), classes %s",
                data_dir, info["n_images"], info["n_train"], info["n_test"], info["class_counts"])
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], info


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
    from lungkit.evaluation.features import get_feature_extractor
    from lungkit.experiment import report

    if config is None or isinstance(config, str):
        config = get_config(config or "quick")
    out_dir = Path(out_dir or Path("runs") / config.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()

    train_x, train_y, test_x, test_y, data_info = load_split(config, out_dir)
    extractor = get_feature_extractor(
        config.features, train_images=train_x, train_labels=train_y,
        cache_dir=out_dir / "features",
    )
    real_stats = metrics.FeatureStats.from_images(test_x, extractor, out_dir / "features")
    results = {"config": config.to_dict(), "data": data_info, "machine": machine_info(),
               "feature_extractor": extractor.name, "models": {}}
    evidence = {"feature_extractor": extractor.name, "features": {"real": real_stats.features},
                "sharpness": {"real": metrics.sharpness(test_x)},
                "similarity": {"real": metrics.memorization(test_x, train_x)["similarity"]}}
    scoring = dict(test=test_x, train=train_x, extractor=extractor, real_stats=real_stats)
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
    results["claims"] = check_claims(results, evidence)
    results["wall_seconds"] = time.time() - started
    _write_json(results, out_dir / "metrics.json")
    report.write_report(results, samples, (train_x, train_y), out_dir)
    logger.info("Report written to %s (%.0f s)", out_dir / "report.html", results["wall_seconds"])
    return results


def _score_variant(info, images, config, scoring, class_options, evidence, variant):
    """`evaluate`s one sampler's images into `info["metrics"]` and keeps its per-image
    arrays (sharpness, features, nearest-training similarity) in `evidence` for the claims."""
    from lungkit.evaluation import metrics

    labels = None
    if info.get("conditional") and class_options:
        labels = labels_from_counts(info["class_counts"])
    info["metrics"] = metrics.evaluate(
        images, scoring["test"], train=scoring["train"], features=scoring["extractor"],
        real_stats=scoring["real_stats"], seed=config.seed, generated_labels=labels,
        tstr_steps=config.tstr_steps, **(class_options if labels is not None else {}),
    )
    evidence["sharpness"][variant] = metrics.sharpness(images)
    evidence["features"][variant] = scoring["extractor"](images)
    evidence["similarity"][variant] = metrics.memorization(images, scoring["train"])["similarity"]


def _reference_row(config, train_x, train_y, test_y, scoring, classifier, evidence):
    """Real training slices scored like samples, at the models' n (what a perfect model gets),
    drawn at random: the training arrays are ordered by class."""
    from lungkit.evaluation import metrics

    pick = np.sort(np.random.default_rng(config.seed).choice(
        len(train_x), size=min(config.n_generate, len(train_x)), replace=False))
    row = metrics.evaluate(
        train_x[pick], scoring["test"], train=None, features=scoring["extractor"],
        real_stats=scoring["real_stats"], seed=config.seed,
        generated_labels=train_y[pick] if classifier else None,
        real_labels=test_y if classifier else None, tstr_steps=config.tstr_steps,
    )
    evidence["features"]["reference"] = scoring["extractor"](train_x[pick])
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
