"""Multi-label stratified splits: seeded, complete, and closer to each class's rate than chance."""

from __future__ import annotations

import numpy as np
import pytest
from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

from imgcls.data.multilabel_splits import multilabel_holdout, multilabel_kfold
from imgcls.errors import ImgclsError

RATES = np.array([0.05, 0.1, 0.2, 0.3, 0.5, 0.7])


def random_targets(n: int = 400, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((n, len(RATES))) < RATES).astype(np.uint8)


def assert_partition(train: list[int], val: list[int], n: int) -> None:
    assert train == sorted(train) and val == sorted(val)
    assert sorted(train + val) == list(range(n))  # every image once, in one part only


def test_the_same_seed_gives_the_same_holdout_and_another_seed_another():
    y = random_targets()
    first = multilabel_holdout(y, 0.2, seed=3)
    assert multilabel_holdout(y, 0.2, seed=3) == first
    assert multilabel_holdout(y, 0.2, seed=4) != first
    assert_partition(*first, n=len(y))
    assert abs(len(first[1]) - 80) <= 3


def test_holdout_keeps_each_class_rate_better_than_a_random_split():
    y = random_targets()
    whole = y.mean(axis=0)
    stratified, chance = [], []
    for seed in range(8):
        _, val = multilabel_holdout(y, 0.2, seed)
        stratified.append(np.abs(y[val].mean(axis=0) - whole).max())
        pick = np.random.default_rng(seed).permutation(len(y))[:80]
        chance.append(np.abs(y[pick].mean(axis=0) - whole).max())
    assert max(stratified) < 0.03  # within 3 points for every class and seed
    assert np.mean(stratified) < np.mean(chance) / 2


def test_images_without_any_label_are_split_too():
    y = random_targets(200)
    y[:60] = 0
    train, val = multilabel_holdout(y, 0.25, seed=0)
    assert_partition(train, val, len(y))
    unlabelled_in_val = sum(i < 60 for i in val)
    assert 10 <= unlabelled_in_val <= 20  # about a quarter of the 60
    train, val = multilabel_holdout(np.zeros((10, 3), np.uint8), 0.2, seed=0)
    assert_partition(train, val, 10) and len(val) == 2


@pytest.mark.parametrize("fraction", [0.01, 0.2, 0.5, 0.9])
def test_tiny_inputs_give_two_nonempty_parts(fraction):
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0]], np.uint8)
    for seed in range(5):
        train, val = multilabel_holdout(y, fraction, seed)
        assert_partition(train, val, 5)
        assert train and val


@pytest.mark.parametrize(
    ("targets", "fraction"),
    [
        (np.eye(3, dtype=np.uint8), 0.9),  # iterstrat puts all three in val
        ([[0, 0, 1], [0, 1, 0], [0, 1, 0], [1, 0, 1], [1, 0, 0], [0, 0, 1], [0, 1, 0]], 0.2),
    ],  # ... and all seven in train
)
def test_a_part_iterstrat_leaves_empty_gets_one_image(targets, fraction):
    y = np.asarray(targets, np.uint8)
    n_val = min(max(round(len(y) * fraction), 1), len(y) - 1)
    raw = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=n_val, random_state=0)
    assert min(len(part) for part in next(raw.split(np.zeros(len(y)), y))) == 0
    train, val = multilabel_holdout(y, fraction, seed=0)
    assert_partition(train, val, len(y))
    assert train and val


def test_holdout_edges():
    y = random_targets(20)
    assert multilabel_holdout(y, 0.0, seed=0) == (list(range(20)), [])
    assert multilabel_holdout(y[:1], 0.5, seed=0) == ([0], [])
    assert multilabel_holdout(y[:0], 0.5, seed=0) == ([], [])
    for bad in (1.0, -0.1):
        with pytest.raises(ImgclsError, match=r"validation fraction must be in \[0, 1\)"):
            multilabel_holdout(y, bad, seed=0)
    one_class = multilabel_holdout(np.array([[1], [0], [1], [0], [1]]), 0.4, seed=0)
    assert_partition(*one_class, n=5)
    big_seed = multilabel_holdout(y, 0.2, seed=2**40)  # past RandomState's 32-bit seeds
    assert big_seed == multilabel_holdout(y, 0.2, seed=2**40)
    assert_partition(*big_seed, n=20)


def test_the_folds_of_one_seed_are_disjoint_and_cover_every_image():
    y = random_targets(200)
    y[:20] = 0
    vals = [multilabel_kfold(y, folds=5, fold=k, seed=7) for k in range(5)]
    for train, val in vals:
        assert_partition(train, val, len(y))
    all_val = sorted(i for _, val in vals for i in val)
    assert all_val == list(range(len(y)))
    for _, val in vals:  # each fold has about a fifth of each class
        assert np.all(np.abs(y[val].sum(axis=0) - y.sum(axis=0) / 5) <= 2)
    assert multilabel_kfold(y, 5, 0, seed=7) == vals[0]
    assert multilabel_kfold(y, 5, 0, seed=8) != vals[0]


def test_a_class_with_fewer_images_than_folds_is_refused_by_name():
    y = random_targets(400)
    y[:, 2] = 0
    y[:3, 2] = 1
    names = ["a", "b", "x", "d", "e", "f"]
    with pytest.raises(ImgclsError) as err:
        multilabel_kfold(y, folds=5, fold=0, seed=0, classes=names)
    assert str(err.value) == (
        "data.folds=5: class 'x' has only 3 image(s); each class needs at least one per fold"
    )
    y[:, 2] = 0  # a class no image has cannot be in any fold; it is not an error
    assert_partition(*multilabel_kfold(y, folds=5, fold=1, seed=0, classes=names), n=400)


def test_folds_on_tiny_and_unlabelled_inputs():
    y = np.array([[1, 1], [1, 0], [0, 1], [1, 1], [0, 0]], np.uint8)
    vals = [multilabel_kfold(y, folds=2, fold=k, seed=0)[1] for k in range(2)]
    assert sorted(vals[0] + vals[1]) == list(range(5)) and all(vals)
    assert_partition(*multilabel_kfold(np.zeros((6, 3), np.uint8), 3, 2, seed=0), n=6)
    with pytest.raises(ImgclsError, match=r"^data.folds=5: only 3 image\(s\); each fold needs"):
        multilabel_kfold(np.zeros((3, 2), np.uint8), folds=5, fold=0, seed=0)
