"""Split assignment: fractions, fixed splits, order independence and refresh stability."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.splits import assign_splits, split_draws, split_rule_text, store_order
from storage.schema import SPLITS


def make_items(n_per_class: int, classes: int = 5) -> tuple[np.ndarray, list[str]]:
    labels = np.repeat(np.arange(classes), n_per_class)
    keys = [f"class{c}/rec_{i:04d}.bin" for c in range(classes) for i in range(n_per_class)]
    return labels, keys


def test_free_items_split_by_fractions_per_class():
    labels, keys = make_items(2000)
    out = assign_splits(labels, [None] * len(labels), 0.1, 0.1, seed=0, keys=keys)
    assert set(out) == {"train", "val", "test"}
    for c in range(5):
        mine = out[labels == c]
        # Binomial(2000, 0.1): std 13.4, so 4.5 std either side
        assert 140 <= (mine == "test").sum() <= 260
        assert 140 <= (mine == "val").sum() <= 260


def test_fixed_splits_are_kept_and_val_is_carved_from_train():
    labels, keys = make_items(1000, classes=2)
    fixed = ["train" if i % 2 else "test" for i in range(len(labels))]
    out = assign_splits(labels, fixed, 0.1, 0.1, seed=3, keys=keys)
    fixed = np.array(fixed)
    assert np.all(out[fixed == "test"] == "test")
    from_train = out[fixed == "train"]
    assert set(from_train) == {"train", "val"}
    assert 60 <= (from_train == "val").sum() <= 140  # Binomial(1000, 0.1)
    assert np.all(assign_splits(labels, ["val"] * len(labels), 0.1, 0.1, seed=3, keys=keys) == "val")


def test_independent_of_listing_order():
    labels, keys = make_items(100)
    out = assign_splits(labels, [None] * len(labels), 0.1, 0.1, seed=7, keys=keys)
    perm = np.random.default_rng(0).permutation(len(labels))
    shuffled = assign_splits(
        labels[perm], [None] * len(labels), 0.1, 0.1, seed=7, keys=[keys[i] for i in perm]
    )
    np.testing.assert_array_equal(shuffled, out[perm])


def test_adding_files_moves_no_existing_file():
    labels, keys = make_items(100)
    before = assign_splits(labels, [None] * len(labels), 0.1, 0.1, seed=1, keys=keys)
    more_labels, more_keys = make_items(130)
    after = assign_splits(more_labels, [None] * len(more_labels), 0.1, 0.1, seed=1, keys=more_keys)
    lookup = dict(zip(more_keys, after, strict=True))
    assert [lookup[k] for k in keys] == before.tolist()


def test_seed_and_class_change_the_draw():
    labels, keys = make_items(300, classes=1)
    a = assign_splits(labels, [None] * 300, 0.2, 0.2, seed=1, keys=keys)
    b = assign_splits(labels, [None] * 300, 0.2, 0.2, seed=2, keys=keys)
    c = assign_splits(labels + 1, [None] * 300, 0.2, 0.2, seed=1, keys=keys)
    assert (a != b).sum() > 50 and (a != c).sum() > 50
    np.testing.assert_array_equal(a, assign_splits(labels, [None] * 300, 0.2, 0.2, seed=1, keys=keys))


def test_zero_fractions_and_bad_arguments():
    labels, keys = make_items(50)
    assert np.all(assign_splits(labels, [None] * len(labels), 0.0, 0.0, seed=0, keys=keys) == "train")
    with pytest.raises(ValueError, match="fractions"):
        assign_splits(labels, [None] * len(labels), 0.6, 0.6, seed=0, keys=keys)
    with pytest.raises(ValueError, match="unknown fixed split"):
        assign_splits(labels, ["dev"] * len(labels), 0.1, 0.1, seed=0, keys=keys)
    with pytest.raises(ValueError, match="fixed splits"):
        assign_splits(labels, [None], 0.1, 0.1, seed=0, keys=keys)


def test_rule_text_names_the_parameters():
    text = split_rule_text(0.1, 0.1, seed=5)
    assert "seed=5" in text and "u < 0.1" in text and "u < 0.2" in text


def test_store_order_groups_splits_and_interleaves_classes():
    labels, keys = make_items(100, classes=4)  # class by class, as a listing comes
    splits = assign_splits(labels, [None] * len(labels), 0.1, 0.1, seed=3, keys=keys)
    order = store_order(splits, split_draws(labels, keys, seed=3))
    assert sorted(order.tolist()) == list(range(len(labels)))
    stored = [SPLITS.index(s) for s in splits[order]]
    assert stored == sorted(stored)  # each split's rows are contiguous, in SPLITS order
    train = labels[order][: stored.count(0)]
    assert all(len(set(train[i : i + 32].tolist())) == 4 for i in range(0, len(train) - 32, 32))


def test_store_order_of_kept_items_survives_additions():
    def stored(n_per_class: int) -> list[str]:
        labels, keys = make_items(n_per_class)
        splits = assign_splits(labels, [None] * len(labels), 0.1, 0.1, seed=5, keys=keys)
        return np.array(keys)[store_order(splits, split_draws(labels, keys, seed=5))].tolist()

    before, after = stored(100), stored(130)
    kept = set(before)
    assert [k for k in after if k in kept] == before
