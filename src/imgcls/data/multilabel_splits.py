"""Seeded multi-label stratified splits: the multi-hot siblings of :mod:`imgcls.data.splits`.

An image has any number of labels, so per-class shuffling (``stratified_split``) cannot keep every
class's share; iterative stratification (Sechidis et al. 2011, the ``iterstrat`` package) gives
each image to the part that most lacks its rarest label, which keeps every class's positive rate
in validation close to the whole set's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from imgcls.errors import ImgclsError


def multilabel_holdout(
    targets: np.ndarray, fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Hold out about ``fraction`` of the images, stratified over every class; returns sorted
    (train, val) indices. ``targets`` is the ``[N, K]`` multi-hot matrix; images without any
    label are distributed too. With ``fraction > 0`` and two or more images, each part gets at
    least one image, as in ``stratified_split``.

    >>> multilabel_holdout(np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 1], [0, 0]]), 0.5, seed=0)
    ([2, 4, 5], [0, 1, 3])
    """
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit  # imports sklearn

    if not 0.0 <= fraction < 1.0:
        raise ImgclsError(f"validation fraction must be in [0, 1), got {fraction}")
    y = _indicator(targets)
    n = len(y)
    if fraction == 0 or n < 2:
        return list(range(n)), []
    # A count, not the fraction: sklearn rounds a fraction's parts up and down (ceil, floor), and
    # refuses when the train part rounds to 0 (1 image, or fraction 0.9 of 5); this is
    # stratified_split's rounding instead.
    n_val = min(max(round(n * fraction), 1), n - 1)
    splitter = MultilabelStratifiedShuffleSplit(
        n_splits=1, test_size=n_val, random_state=_random_state(seed)
    )
    _, val = next(splitter.split(np.zeros(n), y))
    in_val = np.zeros(n, dtype=bool)
    in_val[val] = True
    # The algorithm puts labels first and sizes second: on a handful of images it can leave a
    # part empty (all of them in train, or in val; 3 of 2,000 random sets of 2-11 images). Move
    # one seeded image over, so that validation is never empty nor all there is.
    if in_val.all() or not in_val.any():
        full = np.flatnonzero(in_val == in_val[0])
        moved = full[np.random.default_rng(int(seed)).integers(len(full))]
        in_val[moved] = not in_val[moved]
    return np.flatnonzero(~in_val).tolist(), np.flatnonzero(in_val).tolist()


def multilabel_kfold(
    targets: np.ndarray, folds: int, fold: int, seed: int, classes: Sequence[str] = ()
) -> tuple[list[int], list[int]]:
    """Fold ``fold`` of ``folds`` seeded multi-label stratified folds (iterstrat's
    MultilabelStratifiedKFold, shuffled): returns sorted (train, val) indices. The folds of one
    seed are disjoint and cover every index once. Every class with positive images needs at
    least ``folds`` of them (a class without any is left alone, as ``kfold_split`` ignores a
    class without images); that is necessary, not sufficient, for each fold to see each class.

    >>> multilabel_kfold(np.array([[1, 0], [1, 0], [0, 1], [0, 1]]), folds=2, fold=0, seed=0)
    ([1, 2], [0, 3])
    """
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold  # imports sklearn

    y = _indicator(targets)
    counts = y.sum(axis=0)
    short = np.flatnonzero((counts > 0) & (counts < folds))
    if len(short):
        small = int(short[counts[short].argmin()])
        name = repr(classes[small]) if small < len(classes) else str(small)
        raise ImgclsError(
            f"data.folds={folds}: class {name} has only {counts[small]} image(s); "
            "each class needs at least one per fold"
        )
    if len(y) < folds:  # possible only when no image has a label; sklearn's error is a traceback
        raise ImgclsError(
            f"data.folds={folds}: only {len(y)} image(s); each fold needs at least one"
        )
    splitter = MultilabelStratifiedKFold(
        n_splits=folds, shuffle=True, random_state=_random_state(seed)
    )
    train, val = list(splitter.split(np.zeros(len(y)), y))[fold]
    return sorted(train.tolist()), sorted(val.tolist())


def _indicator(targets: np.ndarray) -> np.ndarray:
    """``targets`` as the boolean ``[N, K>=2]`` matrix iterstrat takes: it refuses one column
    (sklearn calls that "binary", not "multilabel-indicator"), so a column of zeros is added,
    which changes no split."""
    y = np.asarray(targets).astype(bool)
    if y.ndim != 2:
        raise ValueError(f"targets must be a [N, K] multi-hot matrix, got shape {y.shape}")
    if y.shape[1] < 2:
        y = np.hstack([y, np.zeros((len(y), 2 - y.shape[1]), dtype=bool)])
    return y


def _random_state(seed: int) -> int | np.random.RandomState:
    # iterstrat draws from a RandomState, whose integer seeds end at 2**32 - 1; imgcls's seeds
    # only start at 0, so a larger one seeds it through a SeedSequence instead of failing.
    seed = int(seed)
    if seed < 2**32:
        return seed
    return np.random.RandomState(np.random.SeedSequence(seed).generate_state(4))
