"""Sanity probes: does a feature space rank a perfect generator above broken ones?

A probe is a set of images whose right score is known: held-out real slices (the perfect
generator) and transformed or wrong copies of them (`make_probes`):

- "perfect": held-out real slices the reference set does not contain.
- "memorizer": copies of training slices (as good as real to any distance; only a
  nearest-training test can flag it).
- "class_collapse": the perfect set's slices of one class only.
- "mode_collapse": one slice repeated, with faint noise.
- "flip": slices flipped upside down (anatomy in the wrong place, same texture).
- "shuffle": each slice cut into a 4x4 grid whose cells are permuted (same histogram).
- "blur": a Gaussian blur of 1 px; "noise": added Gaussian noise of std 0.1.

`run_probes` scores every probe in every feature space against a reference half of the
held-out slices and judges each with the image-level bootstrap of
`lungkit.evaluation.statistics`: PASS when the space shows the probe is worse than the
perfect set (beyond chance at 95%), FAIL when it shows the opposite, INCONCLUSIVE when
these few images cannot tell. A feature space that is only a blur detector, or global
intensity statistics, passes blur and noise but not flip or shuffle.
"""

import numpy as np
import scipy.ndimage

from lungkit.checks import check_images
from lungkit.evaluation.statistics import (
    kid_difference,
    kid_interval,
    mean_difference,
    verdict,
)

PROBES = ("perfect", "memorizer", "class_collapse", "mode_collapse", "flip", "shuffle",
          "blur", "noise")
BLUR_SIGMA = 1.0  # px: the smallest blur a sound feature space must notice
NOISE_STD = 0.1  # in [0, 1] intensity units (~150 HU in a 1500 HU lung window)
MODE_COLLAPSE_STD = 0.005  # faint noise on the repeated slice, so copies are not exact
SHUFFLE_GRID = 4  # cells per side of the patch shuffle
CRITERIA = {
    "perfect": "KID interval contains 0 (consistent with the reference)",
    "memorizer": "nearer to a training slice than the perfect set (centred cosine)",
    "class_collapse": "more samples nearest to reference slices of the collapsed class",
    "mode_collapse": "KID above the perfect set's",
    "flip": "KID above the perfect set's",
    "shuffle": "KID above the perfect set's",
    "blur": "KID above the perfect set's",
    "noise": "KID above the perfect set's",
}


def split_reference(labels, seed=0):
    """Stratified halves of held-out slices: `(reference_index, source_index)`, sorted."""
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    reference, source = [], []
    for label in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == label))
        reference.extend(index[: (len(index) + 1) // 2])
        source.extend(index[(len(index) + 1) // 2:])
    return np.sort(np.asarray(reference, int)), np.sort(np.asarray(source, int))


def patch_shuffle(images, grid=SHUFFLE_GRID, seed=0):
    """Cuts each image into `grid x grid` cells and permutes them (one permutation per image)."""
    images = check_images(images)
    n, height, width, channels = images.shape
    if height % grid or width % grid:
        raise ValueError(f"Image sides must be multiples of `grid`. Received {height}x{width}, "
                         f"grid={grid}")
    rng = np.random.default_rng(seed)
    cells = images.reshape(n, grid, height // grid, grid, width // grid, channels)
    cells = cells.transpose(0, 1, 3, 2, 4, 5).reshape(n, grid * grid, height // grid,
                                                       width // grid, channels)
    order = np.stack([rng.permutation(grid * grid) for _ in range(n)])
    cells = np.take_along_axis(cells, order[:, :, None, None, None], axis=1)
    cells = cells.reshape(n, grid, grid, height // grid, width // grid, channels)
    return cells.transpose(0, 1, 3, 2, 4, 5).reshape(images.shape)


def make_probes(source, source_labels, train, seed=0):
    """The probe sets built from held-out `source` slices and the `train` slices.

    Args:
        source: held-out real slices, float `(N, H, W, C)` in [0, 1], none in the reference.
        source_labels: their class ints `(N,)` (the class collapse keeps the commonest class).
        train: the generators' training slices (the memorizer copies them).

    Returns:
        `{probe: images}` for every name in `PROBES`, float32 in [0, 1].
    """
    source = check_images(source, "source")
    train = check_images(train, "train")
    labels = np.asarray(source_labels).reshape(-1)
    if len(labels) != len(source):
        raise ValueError(f"`source_labels` must hold one label per image ({len(source)}). "
                         f"Received {len(labels)}")
    rng = np.random.default_rng(seed)
    collapsed = np.bincount(labels).argmax()
    noisy = source + rng.normal(0.0, NOISE_STD, source.shape)
    repeated = np.repeat(source[:1], len(source), axis=0)
    probes = {
        "perfect": source,
        "memorizer": train[rng.choice(len(train), len(source), replace=len(train) < len(source))],
        "class_collapse": source[labels == collapsed],
        "mode_collapse": repeated + rng.normal(0.0, MODE_COLLAPSE_STD, repeated.shape),
        "flip": source[:, ::-1],
        "shuffle": patch_shuffle(source, SHUFFLE_GRID, seed),
        "blur": scipy.ndimage.gaussian_filter(source, sigma=(0, BLUR_SIGMA, BLUR_SIGMA, 0)),
        "noise": noisy,
    }
    return {name: np.clip(images, 0.0, 1.0).astype("float32") for name, images in probes.items()}


def _unit_rows(features, centre):
    rows = features - centre
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def _nearest_training_similarity(features, train_features):
    """Centred cosine similarity of each row to its nearest training row, `(N,)`."""
    centre = train_features.mean(axis=0)
    return (_unit_rows(features, centre) @ _unit_rows(train_features, centre).T).max(axis=1)


def _judge(probe, features, reference, reference_labels, train_features, collapsed, options):
    """One probe in one space: `{kid, kid_interval, effect, interval, verdict}`."""
    probe_features, perfect = features[probe], features["perfect"]
    if min(len(probe_features), len(reference)) < 2:
        return {"kid": None, "kid_interval": None, "verdict": "N/A",
                "note": f"{len(probe_features)} images: too few"}
    kid = kid_interval(probe_features, reference, **options)
    row = {"kid": kid.estimate, "kid_interval": [kid.low, kid.high]}
    if probe == "perfect":
        effect = kid
        outcome = "PASS" if kid.low <= 0.0 <= kid.high else "FAIL"
    elif probe == "memorizer":
        effect = mean_difference(_nearest_training_similarity(probe_features, train_features),
                                 _nearest_training_similarity(perfect, train_features), **options)
        outcome = verdict(effect, 0.0)
    elif probe == "class_collapse":
        def assigned(rows):  # 1 where the nearest reference slice is of the collapsed class
            distances = ((rows[:, None, :] - reference[None, :, :]) ** 2).sum(axis=-1)
            return (reference_labels[distances.argmin(axis=1)] == collapsed).astype("float64")

        effect = mean_difference(assigned(probe_features), assigned(perfect), **options)
        outcome = verdict(effect, 0.0)
    else:
        effect = kid_difference(probe_features, perfect, reference, **options)
        outcome = verdict(effect, 0.0)
    row.update(effect=effect.estimate, interval=[effect.low, effect.high], verdict=outcome)
    return row


def run_probes(held_out, held_out_labels, train, extractors, seed=0, **options):
    """Scores every probe in every feature space and judges it.

    Args:
        held_out: held-out real slices, float `(N, H, W, C)` in [0, 1]; half become the
            reference (`split_reference`), half the source of the probes.
        held_out_labels: their class ints.
        train: the generators' training slices.
        extractors: `{space: FeatureExtractor}` (e.g. `build_extractors`'s).
        seed: seed of the split, the probes and the bootstrap.
        options: passed to the bootstrap (`rounds`, `level`).

    Returns:
        dict: `n_reference`, `n_source`, `extractors` {space: name}, `criteria`
        (`CRITERIA`), `probes` {probe: {space: {kid, kid_interval, effect, interval,
        verdict}}} and `passed` {space: probes passed, of those judged}.
    """
    held_out = check_images(held_out, "held_out")
    labels = np.asarray(held_out_labels).reshape(-1)
    reference_index, source_index = split_reference(labels, seed)
    probes = make_probes(held_out[source_index], labels[source_index], train, seed)
    collapsed = np.bincount(labels[source_index]).argmax()
    options = {"seed": seed, **options}
    table = {probe: {} for probe in PROBES}
    passed = {}
    for space, extractor in extractors.items():
        reference = extractor(held_out[reference_index]).astype("float64")
        train_features = extractor(train).astype("float64")
        features = {name: extractor(images).astype("float64") for name, images in probes.items()}
        for probe in PROBES:
            table[probe][space] = _judge(probe, features, reference, labels[reference_index],
                                         train_features, collapsed, options)
        judged = [table[p][space]["verdict"] for p in PROBES
                  if table[p][space]["verdict"] != "N/A"]
        passed[space] = [sum(v == "PASS" for v in judged), len(judged)]
    return {"n_reference": int(len(reference_index)), "n_source": int(len(source_index)),
            "extractors": {space: e.name for space, e in extractors.items()},
            "criteria": dict(CRITERIA), "probes": table, "passed": passed}
