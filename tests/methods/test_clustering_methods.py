"""image-clustering and semdedup on planted clusters and near-duplicate groups."""

import numpy as np
import pytest

from d2scale.errors import D2ScaleError
from d2scale.methods.image_clustering import image_clustering_filter
from d2scale.methods.semdedup import dominated, semdedup_filter


def blobs(rng, centres: np.ndarray, per: int, noise: float) -> np.ndarray:
    x = np.repeat(centres, per, axis=0) + noise * rng.normal(
        size=(len(centres) * per, centres.shape[1])
    )
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_image_clustering_keeps_the_clusters_of_the_targets():
    rng = np.random.default_rng(0)
    centres = np.eye(16)[:4] * 10  # four orthogonal directions
    pool = blobs(rng, centres, 25, 0.5)  # rows 0-24 blob 0, 25-49 blob 1, ...
    targets = blobs(rng, centres[[0, 2]], 3, 0.5)
    keep, info = image_clustering_filter(pool, targets, n_clusters=4, seed=1)
    np.testing.assert_array_equal(keep, np.r_[0:25, 50:75])
    assert info == {"n_clusters": 4, "target_clusters": 2, "kept": 50}
    with pytest.raises(D2ScaleError, match="dimensions"):
        image_clustering_filter(pool, targets[:, :8], n_clusters=4)
    with pytest.raises(D2ScaleError, match="number of clusters"):
        image_clustering_filter(pool, targets, n_clusters=101)


def test_dominated_is_semdedups_rule():
    # A~B and B~C within the threshold, A and C not: B and C both go (SemDeDup compares with
    # every earlier row, removed or not)
    angle = np.deg2rad([0.0, 8.0, 16.0])
    x = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    np.testing.assert_array_equal(dominated(x, np.cos(np.deg2rad(10))), [False, True, True])
    np.testing.assert_array_equal(
        dominated(x[[0, 2, 1]], np.cos(np.deg2rad(10))), [False, False, True]
    )
    big = np.random.default_rng(0).normal(size=(300, 8))
    big /= np.linalg.norm(big, axis=1, keepdims=True)
    np.testing.assert_array_equal(dominated(big, 0.9, max_cells=1000), dominated(big, 0.9))


@pytest.mark.parametrize("keep", ["hard", "easy"])
def test_semdedup_keeps_exactly_one_per_planted_group(keep):
    rng = np.random.default_rng(7)
    base = rng.normal(size=(60, 32))
    sizes = rng.integers(1, 6, size=60)  # groups of 1 to 5 near-duplicates
    group = np.repeat(np.arange(60), sizes)
    x = base[group] + 1e-3 * rng.normal(size=(group.size, 32))  # cosine within a group > 0.999
    perm = rng.permutation(group.size)
    x, group = x[perm], group[perm]
    kept, info = semdedup_filter(x, eps=0.01, n_clusters=6, seed=0, keep=keep)
    assert sorted(group[kept]) == list(range(60))  # one row of every group, no more
    assert info["removed"] == group.size - 60


@pytest.mark.parametrize(("keep", "survivor"), [("hard", 2), ("easy", 0)])
def test_semdedup_keeps_the_row_farthest_from_or_nearest_to_its_centroid(keep, survivor):
    # one cluster: the centroid is the mean direction; rows 0-2 are one near-duplicate group
    angle = np.deg2rad([20.0, 20.2, 20.4, -30.0, -40.0, -50.0, 30.0, 45.0])
    x = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    mean = x.sum(axis=0)
    cosine = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (mean / np.linalg.norm(mean))
    assert np.argmin(cosine[:3]) == 2 and np.argmax(cosine[:3]) == 0
    kept, _ = semdedup_filter(x, eps=0.001, n_clusters=1, seed=0, keep=keep)
    np.testing.assert_array_equal(kept, [survivor, 3, 4, 5, 6, 7])


def test_semdedup_eps_zero_removes_only_exact_duplicates():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 8))
    x[10] = x[3]
    x[20] = x[3] * 2  # same direction: cosine 1
    kept, _ = semdedup_filter(x, eps=0.0, n_clusters=4, seed=0)
    assert kept.size == 38 and len({3, 10, 20} & set(kept.tolist())) == 1
    with pytest.raises(D2ScaleError, match="eps"):
        semdedup_filter(x, eps=1.0, n_clusters=4)
