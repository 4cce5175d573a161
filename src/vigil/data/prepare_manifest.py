"""The prepare stage's manifest: split counts and checks, the manifest body, the content hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from vigil.config import ImagePrep, PrepareConfig
from vigil.data.prepare_items import BadFiles, PrepareError, log
from vigil.data.prepared import SPLITS, Item

ITEM_FIELDS = tuple(f.name for f in fields(Item))


def _counts(items: list[Item]) -> dict[str, Any]:
    counts: dict[str, Any] = {"total": len(items)}
    for split in SPLITS:
        members = [it for it in items if it.split == split]
        by_defect: dict[str, int] = {}
        for it in members:
            by_defect[it.defect] = by_defect.get(it.defect, 0) + 1
        entry = {
            "items": len(members),
            "anomalous": sum(it.label for it in members),
            "with_mask": sum(it.has_mask for it in members),
            "by_defect": dict(sorted(by_defect.items())),
        }
        if any(it.video for it in members):
            entry["clips"] = len({it.video for it in members})
        counts[split] = entry
    return counts


def _check_splits(name: str, counts: dict[str, Any], modality: str = "image") -> None:
    """After bad files are dropped, every split must still hold data (and tune/test anomalies).

    An image dataset without any labelled anomaly (``train/good`` alone, or with ``test/good``)
    is normal-only: train and val must hold data, tune and test may be empty, and a warning says
    what the gate will need."""
    labelled = sum(counts[split]["anomalous"] for split in SPLITS)
    if modality == "image" and labelled == 0:
        for split in ("train", "val"):
            if counts[split]["items"] == 0:
                raise PrepareError(
                    f"dataset {name!r}: split {split!r} is empty after dropping bad files"
                )
        log.warning(
            "dataset %r: normal-only (no labelled anomalies): the sweep and evaluate use synthetic "
            "anomalies pasted into val images, and the gate will need labelled anomalies: add "
            "test/<defect>/ images with ground_truth/<defect>/<name>_mask.png masks, or set "
            "gate.allow_synthetic_evidence: true",
            name,
        )
        return
    for split in SPLITS:
        if counts[split]["items"] == 0:
            raise PrepareError(
                f"dataset {name!r}: split {split!r} is empty after dropping bad files"
            )
    if counts["test"]["anomalous"] == 0:
        raise PrepareError(f"dataset {name!r}: the test split has no anomalous item")
    if counts["tune"]["anomalous"] == 0:
        log.warning(
            "dataset %r: the tune split has no anomalous item (too few anomalies to share)", name
        )


def manifest_parts(
    name: str,
    root: Path,
    modality: str,
    prep: ImagePrep,
    cfg: PrepareConfig,
    items: list[Item],
    bad: BadFiles,
    extra: dict[str, Any],
) -> dict[str, Any]:
    counts = _counts(items)
    _check_splits(name, counts, modality)
    counts["bad_files"] = len(bad.entries)
    counts["source_files"] = bad.total
    # the reference is the first decodable train frame: the first train row written
    reference_index = None
    if extra.get("reference_origin") is not None:
        reference_index = next(it.index for it in items if it.split == "train")
    return {
        "dataset": name,
        "source": str(root),
        "modality": modality,
        "params": {
            "prep": prep.model_dump(mode="json"),
            "split": cfg.split.model_dump(mode="json"),
            "max_bad_fraction": cfg.max_bad_fraction,
        },
        "frame_shape": [*prep.size, prep.channels],
        "counts": counts,
        "bad_files": bad.entries,
        "reference_index": reference_index,
        "labelled_anomalies": sum(it.label for it in items),
        **extra,
        "items": [{name: getattr(it, name) for name in ITEM_FIELDS} for it in items],
    }


def content_hash(manifest: dict[str, Any], data_hash: str) -> str:
    """sha256 of the arrays, the items and the params: equal iff the prepared data is equal."""
    digest = hashlib.sha256(data_hash.encode())
    digest.update(json.dumps(manifest["params"], sort_keys=True).encode())
    for item in manifest["items"]:
        digest.update(json.dumps(item, sort_keys=True).encode())
    return digest.hexdigest()


def relative_to_root(path: Path, root: Path) -> str:
    """``path`` relative to the source root when inside it (manifests stay machine independent)."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)
