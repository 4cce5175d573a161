"""The test-split hash: the gate compares with the champion only on the same test split, so the
hash must ignore everything but the test items (content and label, in order)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from vigil.data.prepared import Item, PreparedDataset
from vigil.evaluation.evaluate import hash_test_split


def dataset(items: list[Item]) -> PreparedDataset:
    n = len(items)
    return PreparedDataset(
        root=Path("."), manifest={"content_hash": "unused"},
        frames=np.zeros((n, 4, 4, 1), np.uint8), masks=np.zeros((n, 4, 4), np.uint8),
        items=tuple(replace(it, index=i) for i, it in enumerate(items)),
    )


def item(name: str, split: str, label: int = 0) -> Item:
    return Item(index=0, origin=name, split=split, label=label,
                defect="good" if label == 0 else "crack", has_mask=False, sha256=f"sha-{name}")


BASE = [item("a", "train"), item("t1", "test"), item("t2", "test", 1), item("u", "tune", 1)]


def test_new_training_data_keeps_the_test_split_hash():
    more_train = BASE + [item("new1", "train"), item("new2", "val")]
    assert hash_test_split(dataset(more_train)) == hash_test_split(dataset(BASE))


def test_the_hash_follows_test_content_labels_and_order():
    base = hash_test_split(dataset(BASE))
    assert len(base) == 64
    assert hash_test_split(dataset(BASE + [item("t3", "test")])) != base  # one more test item
    relabelled = [BASE[0], BASE[1], item("t2", "test", 0), BASE[3]]
    assert hash_test_split(dataset(relabelled)) != base
    reordered = [BASE[0], BASE[2], BASE[1], BASE[3]]
    assert hash_test_split(dataset(reordered)) != base
