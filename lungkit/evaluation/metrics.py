"""Image-quality, diversity, fidelity and memorization metrics for generated CT slices.

All image inputs are float NHWC in [0, 1] with 1 or 3 channels. Implements:

- `psnr`, `ssim` (paired, per image), via `tf.image`.
- `sharpness`: variance of the Laplacian (Pech-Pacheco et al., 2000), the blur the paper sees.
- `ms_ssim_diversity`: mean MS-SSIM (Wang et al., 2003) between random sample pairs; lower is
  more diverse (the measure of Odena et al., 2017).
- `frechet_distance` / `fid` (Heusel et al., 2017; stable square root as in pytorch-fid),
  `kid` (unbiased cubic-kernel MMD over subsets, Binkowski et al., 2018; as clean-fid).
- `precision_recall`: k-NN manifold estimate (Kynkaanniemi et al., 2019).
- `memorization`: each sample's nearest training image and the share of near-copies.
- `class_fidelity`, `train_synthetic_test_real`: class-conditional usefulness.
- `evaluate`: all of the above in one dict (keys in `EVALUATE_KEYS`, and the feature-space
  metrics `FEATURE_METRICS` once per extractor, named `kid[random_cnn]`), and on request the
  per-image arrays behind them (for the claims' bootstrap).
"""

import logging

import numpy as np
import tensorflow as tf

from lungkit.checks import check_images
from lungkit.data.labels import CLASS_NAMES, NUM_CLASSES
from lungkit.evaluation.classifier import predict_labels, train_classifier
from lungkit.evaluation.common import resize_images
from lungkit.evaluation.distances import FeatureStats, fid, kid, precision_recall
from lungkit.evaluation.statistics import feature_key, kid_interval

logger = logging.getLogger(__name__)

MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. (2003), 5 scales
MSSSIM_MIN_SCALE_SIZE = 8  # smallest image side (px) at MS-SSIM's coarsest scale
SSIM_FILTER_SIZE = 11  # Gaussian window of SSIM (Wang et al., 2004)
THUMBNAIL_SIZE = 32  # side of the grayscale thumbnails compared by `memorization`

KID_BOOTSTRAP_ROUNDS = 200  # resamples of each KID interval (the claims use statistics.ROUNDS)

EVALUATE_KEYS = (  # every call; the feature-space keys follow, named by space (`feature_key`)
    "n_generated", "n_real", "n_train", "feature_extractors",
    "sharpness_mean", "sharpness_real_mean", "ms_ssim_diversity", "ms_ssim_diversity_real",
    "memorization_share", "nearest_similarity_mean", "nearest_similarity_max",
    "memorization_share_real", "nearest_similarity_real_mean",
    "psnr", "ssim", "class_fidelity", "class_fidelity_per_class", "tstr_accuracy",
)
FEATURE_METRICS = ("fid", "fid_reliable", "kid", "kid_interval", "kid_subset_size",
                   "feature_dims", "precision", "recall")


# --------------------------------------------------------------------------- paired / per image
def _check_pair(a, b):
    a, b = check_images(a, "a"), check_images(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"`a` and `b` must have one shape. Received {a.shape} and {b.shape}")
    return a, b


def psnr(a, b):
    """Peak signal-to-noise ratio in dB per image pair, `(N,)`; inf where a == b (max 1.0)."""
    a, b = _check_pair(a, b)
    return tf.image.psnr(a, b, max_val=1.0).numpy().astype("float64")


def ssim(a, b):
    """SSIM per image pair, `(N,)` in [-1, 1] (1 = identical); window shrinks below 11 px."""
    a, b = _check_pair(a, b)
    filter_size = min(SSIM_FILTER_SIZE, *a.shape[1:3])
    return tf.image.ssim(a, b, max_val=1.0, filter_size=filter_size).numpy().astype("float64")


def sharpness(images):
    """Variance of the Laplacian per image, `(N,)`: higher is sharper.

    Computed on grayscale (channel mean) in the 0-255 intensity convention of OpenCV's
    `cv2.Laplacian(gray, cv2.CV_64F).var()`, 4-neighbour kernel, over the interior pixels. It
    depends on image size and content: compare models only at one size on one dataset.
    """
    gray = check_images(images).mean(axis=-1).astype("float64") * 255.0
    laplacian = (gray[:, :-2, 1:-1] + gray[:, 2:, 1:-1] + gray[:, 1:-1, :-2] + gray[:, 1:-1, 2:]
                 - 4.0 * gray[:, 1:-1, 1:-1])
    return laplacian.reshape(len(gray), -1).var(axis=1)


def msssim_settings(size):
    """Scales and window for MS-SSIM on `size`-px images: `(power_factors, filter_size)`.

    TF's MS-SSIM halves the image per scale and needs the coarsest scale to be at least the
    filter size. We keep as many of the 5 standard scales as leave >= 8 px at the coarsest
    (e.g. 3 at 32 px, 4 at 64 px, 5 from 128 px), renormalise their weights to sum to 1, and
    use a window of min(11, coarsest side).
    """
    scales = 1
    while scales < len(MSSSIM_WEIGHTS) and size // 2**scales >= MSSSIM_MIN_SCALE_SIZE:
        scales += 1
    weights = np.asarray(MSSSIM_WEIGHTS[:scales])
    filter_size = min(SSIM_FILTER_SIZE, size // 2 ** (scales - 1))
    return tuple(float(w) for w in weights / weights.sum()), filter_size


def ms_ssim_diversity(images, pairs=200, seed=0, batch_size=64):
    """Mean MS-SSIM over random pairs of distinct images: lower means more diverse.

    Args:
        images: float `(N, H, W, C)` in [0, 1], N >= 2.
        pairs: number of random pairs; all N(N-1)/2 pairs when there are no more than that.

    Returns:
        float in [0, 1] (1 = all images identical). Scales as in `msssim_settings`.
    """
    images = check_images(images)
    n = len(images)
    if n < 2:
        raise ValueError(f"`images` must hold at least 2 images. Received {n}")
    first, second = np.triu_indices(n, k=1)
    if len(first) > pairs:
        chosen = np.random.default_rng(seed).choice(len(first), size=pairs, replace=False)
        first, second = first[chosen], second[chosen]
    power_factors, filter_size = msssim_settings(min(images.shape[1:3]))
    scores = []
    for start in range(0, len(first), batch_size):
        a = images[first[start : start + batch_size]]
        b = images[second[start : start + batch_size]]
        scores.append(tf.image.ssim_multiscale(a, b, max_val=1.0, power_factors=power_factors,
                                               filter_size=filter_size).numpy())
    return float(np.mean(np.concatenate(scores)))




def _thumbnails(images):
    """Mean-centred, unit-norm 32x32 grayscale thumbnails, `(N, 1024)`."""
    small = resize_images(check_images(images), THUMBNAIL_SIZE, 1).reshape(len(images), -1)
    small = small - small.mean(axis=1, keepdims=True)
    return small / np.maximum(np.linalg.norm(small, axis=1, keepdims=True), 1e-8)


def memorization(generated, train, threshold=0.95, features=None, batch_size=512):
    """Finds each generated image's nearest training image.

    Similarity: with `features=None`, Pearson correlation (cosine of mean-centred vectors) of
    32x32 grayscale thumbnails, robust to brightness shifts; with a `FeatureExtractor`, cosine
    similarity of its features. 1.0 means an exact copy.

    Returns:
        dict: `nearest_index` ints `(N,)`, `similarity` floats `(N,)` in [-1, 1], `share`
        (fraction with similarity >= threshold), `threshold`, `method`.
    """
    if features is None:
        gen, ref, method = _thumbnails(generated), _thumbnails(train), "pixel_correlation_32px"
    else:
        gen, ref = features(generated).astype("float64"), features(train).astype("float64")
        gen /= np.maximum(np.linalg.norm(gen, axis=1, keepdims=True), 1e-12)
        ref /= np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
        method = f"cosine_{features.name}"
    index, similarity = [], []
    for start in range(0, len(gen), batch_size):
        scores = gen[start : start + batch_size] @ ref.T
        index.append(scores.argmax(axis=1))
        similarity.append(scores.max(axis=1))
    similarity = np.concatenate(similarity)
    return {"nearest_index": np.concatenate(index), "similarity": similarity,
            "share": float((similarity >= threshold).mean()), "threshold": threshold,
            "method": method}


# --------------------------------------------------------------------------- classes
def class_fidelity(generated, requested_labels, classifier, class_names=CLASS_NAMES):
    """How often a classifier trained on real images recognises the requested class.

    Args:
        classifier: a Keras classifier (logits), an object with `predict_labels(images)`
            (e.g. `DomainEncoder`), or a callable `images -> labels (N,) or scores (N, K)`.

    Returns:
        dict: `accuracy` (overall), `per_class` {class name: accuracy, or None when that
        class was not requested}, `counts` {class name: samples}.
    """
    images = check_images(generated, "generated")
    requested = np.asarray(requested_labels).astype("int64").reshape(-1)
    if len(requested) != len(images):
        raise ValueError(f"`requested_labels` must hold one label per image ({len(images)}). "
                         f"Received {len(requested)}")
    if hasattr(classifier, "predict_labels"):
        predicted = classifier.predict_labels(images)
    elif hasattr(classifier, "predict") and hasattr(classifier, "input_shape"):
        predicted = predict_labels(classifier, images)
    else:
        predicted = np.asarray(classifier(images))
        predicted = predicted.argmax(axis=-1) if predicted.ndim == 2 else predicted
    correct = np.asarray(predicted).reshape(-1) == requested
    per_class = {name: (float(correct[requested == label].mean()) if (requested == label).any()
                        else None) for label, name in enumerate(class_names)}
    counts = {name: int((requested == label).sum()) for label, name in enumerate(class_names)}
    return {"accuracy": float(correct.mean()), "per_class": per_class, "counts": counts}


def train_synthetic_test_real(synthetic_images, synthetic_labels, real_test_images,
                              real_test_labels, epochs=10, image_size=None, num_classes=NUM_CLASSES,
                              steps=None):
    """Trains the lungkit CNN on generated images only; returns its accuracy on real ones.

    Near the real-trained accuracy when the synthetic set captures the classes; chance
    (1 / num_classes) when it does not. `image_size` defaults to the real images' size;
    `steps` (optimizer steps) replaces `epochs` when given, as in `train_classifier`.
    """
    real = check_images(real_test_images, "real_test_images")
    real_labels = np.asarray(real_test_labels).astype("int64").reshape(-1)
    model = train_classifier(synthetic_images, synthetic_labels,
                             image_size=image_size or real.shape[1], channels=real.shape[-1],
                             num_classes=num_classes, epochs=epochs, steps=steps)
    return float((predict_labels(model, real) == real_labels).mean())


# --------------------------------------------------------------------------- all at once
def _as_spaces(features, real_stats):
    """`({space: extractor}, {space: FeatureStats or None})` from one extractor or a dict."""
    if features is None:
        return {}, {}
    if not isinstance(features, dict):
        features = {features.name: features}
        real_stats = {space: real_stats for space in features}
    real_stats = real_stats if isinstance(real_stats, dict) else {}
    return features, {space: real_stats.get(space) for space in features}


def _feature_metrics(space, fake, real, kid_subsets, kid_subset_size, kid_rounds, k, seed):
    """FID, KID (with its bootstrap interval) and precision/recall in one feature space."""
    subset = min(kid_subset_size, len(fake.features), len(real.features))
    kid_mean, _ = kid(fake, real, kid_subsets, kid_subset_size, seed)  # spread: not an error bar
    interval = kid_interval(fake.features, real.features, rounds=kid_rounds, seed=seed)
    dims = fake.features.shape[1]
    row = {"fid": fid(fake, real),
           "fid_reliable": bool(min(len(fake.features), len(real.features)) >= dims),
           "kid": kid_mean, "kid_interval": [interval.low, interval.high],
           "kid_subset_size": subset, "feature_dims": dims, "precision": None, "recall": None}
    if min(len(fake.features), len(real.features)) > k:
        row["precision"], row["recall"] = precision_recall(real, fake, k)
    return {feature_key(metric, space): value for metric, value in row.items()}


def evaluate(generated, real, train=None, features=None, *, real_stats=None, cache_dir=None,
             paired=False, generated_labels=None, classifier=None, real_labels=None,
             tstr_epochs=10, tstr_steps=None, kid_subsets=100, kid_subset_size=1000,
             kid_rounds=KID_BOOTSTRAP_ROUNDS, k=3, memorization_threshold=0.95,
             diversity_pairs=200, seed=0, progress=False, return_arrays=False):
    """Every metric for one model's samples, as a JSON-ready dict.

    Args:
        generated: samples, float `(N, H, W, C)` in [0, 1].
        real: held-out real images (the reference for FID/KID/precision/recall), same range.
        train: the training images, for memorization (None: memorization keys are None).
        features: a `lungkit.evaluation.common.FeatureExtractor`, or `{space: extractor}`
            (e.g. `build_extractors`'s); None: no feature-space metrics.
        real_stats: precomputed `FeatureStats` of `real` (a dict by space with a dict of
            extractors); skips extracting the real images' features again.
        cache_dir: where `FeatureStats.from_images` caches real-image features.
        paired: `generated[i]` reconstructs `real[i]` (adds psnr/ssim means).
        generated_labels: class requested for each sample; with `classifier` gives class
            fidelity, with `real_labels` gives train-on-synthetic-test-on-real accuracy.
        tstr_epochs, tstr_steps: training of the train-on-synthetic classifier (steps, when
            given, replace epochs; see `lungkit.evaluation.classifier.train_classifier`).
        kid_rounds: bootstrap resamples of KID's interval.
        return_arrays: also return the per-image arrays the numbers came from.

    Returns:
        dict with the keys `EVALUATE_KEYS` and, per feature space S (the dict's keys, or the
        extractor's name), the keys `FEATURE_METRICS` named `metric[S]` (`feature_key`):
        `fid[S]`; `fid_reliable[S]` (False when either set has fewer images than the space
        has dimensions: the covariance is then singular and FID mostly bias); `kid[S]` (mean
        over `kid_subsets` subsets of `kid_subset_size[S]` images per set, cubic kernel
        `(x.y / D + 1)^3`, unitless); `kid_interval[S]` (95% bootstrap interval of KID over
        images, `statistics.kid_interval`); `feature_dims[S]`; `precision[S]` (share of
        samples inside the real images' k-NN manifold: fidelity) and `recall[S]` (share of
        real images inside the samples' manifold: coverage). `feature_extractors` maps each
        space to the extractor's full name. Also: counts `n_generated`, `n_real`,
        `n_train`; `sharpness_mean` (+ `sharpness_real_mean`); `ms_ssim_diversity` (+
        `_real`; lower = more diverse); `memorization_share` (share of samples whose nearest
        training image has pixel correlation >= threshold), `nearest_similarity_mean`,
        `nearest_similarity_max` and the held-out real images' own `memorization_share_real`,
        `nearest_similarity_real_mean` (the baseline); `psnr`, `ssim` (paired only);
        `class_fidelity`, `class_fidelity_per_class`; `tstr_accuracy`. Metrics not computed
        are None. With `return_arrays`, `(result, arrays)`: `sharpness`, `sharpness_real`,
        `similarity`, `similarity_real` (None without `train`) per image, `features`
        `{space: (N, D)}` of the samples and `real_features` `{space: (N_real, D)}`.
    """
    generated = check_images(generated, "generated")
    real = check_images(real, "real")
    spaces, real_stats = _as_spaces(features, real_stats)
    result = dict.fromkeys(EVALUATE_KEYS)
    arrays = {"sharpness": sharpness(generated), "sharpness_real": sharpness(real),
              "similarity": None, "similarity_real": None, "features": {}, "real_features": {}}
    result.update(n_generated=len(generated), n_real=len(real),
                  n_train=None if train is None else len(train),
                  sharpness_mean=float(arrays["sharpness"].mean()),
                  sharpness_real_mean=float(arrays["sharpness_real"].mean()),
                  feature_extractors={space: e.name for space, e in spaces.items()})
    if len(generated) >= 2:
        result["ms_ssim_diversity"] = ms_ssim_diversity(generated, diversity_pairs, seed)
    if len(real) >= 2:
        result["ms_ssim_diversity_real"] = ms_ssim_diversity(real, diversity_pairs, seed)
    for space, extractor in spaces.items():
        reference = real_stats[space]
        if reference is None:
            reference = FeatureStats.from_images(real, extractor, cache_dir, progress)
        fake = FeatureStats.from_features(extractor(generated, progress=progress), extractor.name)
        arrays["features"][space], arrays["real_features"][space] = (fake.features,
                                                                     reference.features)
        result.update(_feature_metrics(space, fake, reference, kid_subsets, kid_subset_size,
                                       kid_rounds, k, seed))
    if train is not None:
        copies = memorization(generated, train, memorization_threshold)
        baseline = memorization(real, train, memorization_threshold)
        arrays["similarity"], arrays["similarity_real"] = (copies["similarity"],
                                                           baseline["similarity"])
        result.update(memorization_share=copies["share"],
                      nearest_similarity_mean=float(copies["similarity"].mean()),
                      nearest_similarity_max=float(copies["similarity"].max()),
                      memorization_share_real=baseline["share"],
                      nearest_similarity_real_mean=float(baseline["similarity"].mean()))
    if paired:
        result["psnr"] = float(np.mean(psnr(generated, real)))
        result["ssim"] = float(np.mean(ssim(generated, real)))
    if generated_labels is not None and classifier is not None:
        fidelity = class_fidelity(generated, generated_labels, classifier)
        result["class_fidelity"] = fidelity["accuracy"]
        result["class_fidelity_per_class"] = fidelity["per_class"]
    if generated_labels is not None and real_labels is not None:
        result["tstr_accuracy"] = train_synthetic_test_real(generated, generated_labels, real,
                                                            real_labels, epochs=tstr_epochs,
                                                            steps=tstr_steps)
    logger.info("Evaluated %d samples against %d real images (features: %s)",
                len(generated), len(real), ", ".join(result["feature_extractors"].values()))
    return (result, arrays) if return_arrays else result
