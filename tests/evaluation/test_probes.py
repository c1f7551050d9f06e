"""Tests for lungkit.evaluation.probes: the probes are what they say, and a sound feature space
(the seeded random CNN) passes them where a broken one (global mean and std) does not."""

import numpy as np
import pytest

from lungkit.data.phantom import make_phantom_slice, slice_rng
from lungkit.evaluation import probes
from lungkit.evaluation.common import FeatureExtractor
from lungkit.evaluation.extractors import StandardizedFeatures
from lungkit.evaluation.random_features import RandomCNNFeatures

KINDS = ("normal", "benign", "malignant")


class GlobalStats(FeatureExtractor):
    """A broken feature space: each image's mean and std (blind to where anatomy is)."""

    name = "global_stats"

    def embed_batch(self, images):
        return np.stack([images.mean(axis=(1, 2, 3)), images.std(axis=(1, 2, 3))], axis=1)


@pytest.fixture(scope="module")
def phantom():
    """120 phantom slices at 32 px: 48 held out, 48 training, 24 for the scales."""
    images = np.asarray([make_phantom_slice(slice_rng(0, kind, i + 1), size=32, kind=kind)
                         for kind in KINDS for i in range(40)], "float32")[..., None] / 255.0
    labels = np.repeat([0, 1, 2], 40)
    order = np.random.default_rng(0).permutation(len(images))
    held, train, scales = order[:48], order[48:96], order[96:]
    return images[held], labels[held], images[train], images[scales]


@pytest.fixture(scope="module")
def probe_results(phantom):
    held, held_labels, train, scales = phantom
    extractors = {"random_cnn": StandardizedFeatures(RandomCNNFeatures(32, 1), scales),
                  "global_stats": StandardizedFeatures(GlobalStats(), scales)}
    return probes.run_probes(held, held_labels, train, extractors, rounds=200)


def test_probes_are_the_transformations_they_name(phantom):
    held, labels, train, _ = phantom
    made = probes.make_probes(held[:12], labels[:12], train)
    assert set(made) == set(probes.PROBES)
    for name, images in made.items():
        assert images.dtype == np.float32 and 0 <= images.min() and images.max() <= 1, name
    np.testing.assert_array_equal(made["flip"], held[:12, ::-1])
    shuffled = made["shuffle"]  # the same pixels, elsewhere
    np.testing.assert_array_equal(np.sort(shuffled.reshape(12, -1)), np.sort(
        held[:12].reshape(12, -1)))
    assert not np.array_equal(shuffled, held[:12])
    collapsed = np.bincount(labels[:12]).argmax()
    assert len(made["class_collapse"]) == (labels[:12] == collapsed).sum()
    assert all((copy == train).all(axis=(1, 2, 3)).any() for copy in made["memorizer"])
    assert made["mode_collapse"].std(axis=0).max() < 0.05  # one slice, faint noise
    assert np.abs(made["noise"] - held[:12]).mean() > 0.05
    with pytest.raises(ValueError, match="multiples of `grid`"):
        probes.patch_shuffle(held[:2, :30, :30])


def test_split_reference_is_stratified_and_disjoint():
    labels = np.repeat([0, 1, 2], [4, 5, 6])
    reference, source = probes.split_reference(labels)
    assert not set(reference) & set(source) and len(reference) + len(source) == 15
    assert np.bincount(labels[source]).tolist() == [2, 2, 3]


def test_a_sound_feature_space_ranks_the_perfect_generator_first(probe_results):
    table = probe_results["probes"]
    assert probe_results["n_reference"] == 25 and probe_results["n_source"] == 23
    for probe in ("perfect", "memorizer", "mode_collapse", "flip", "shuffle", "blur", "noise"):
        row = table[probe]["random_cnn"]
        assert row["verdict"] == "PASS", (probe, row)
    for probe in ("flip", "shuffle", "blur", "noise"):  # KID: real below every distortion
        assert table[probe]["random_cnn"]["kid"] > table["perfect"]["random_cnn"]["kid"]


def test_a_broken_feature_space_fails_the_probes_that_move_anatomy(probe_results):
    table = probe_results["probes"]
    for probe in ("flip", "shuffle"):  # the same pixel values: global statistics cannot see it
        row = table[probe]["global_stats"]
        assert row["verdict"] != "PASS" and abs(row["effect"]) < 1e-3, (probe, row)
    done, judged = probe_results["passed"]["global_stats"]
    assert done < probe_results["passed"]["random_cnn"][0] and judged == 8
