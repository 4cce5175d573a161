"""The prepare stage for images: an MVTec-layout folder streamed into a ``PreparedWriter``."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from vigil.config import ImagePrep, PrepareConfig
from vigil.data.ingest import IMAGE_EXTENSIONS, ImageRecord, scan_images
from vigil.data.prepare_items import (
    BadFiles,
    Loaded,
    load_file,
    ordered_map,
    progress_bar,
    warn_ignored,
)
from vigil.data.prepare_manifest import manifest_parts
from vigil.data.prepared import Item, PreparedWriter
from vigil.data.splits import split_labelled, split_normal


def _image_splits(records: tuple[ImageRecord, ...], cfg: PrepareConfig) -> list[str]:
    train = [i for i, r in enumerate(records) if r.part == "train"]
    test = [i for i, r in enumerate(records) if r.part == "test"]
    splits = [""] * len(records)
    for i, split in zip(
        train, split_normal(len(train), cfg.split.val_fraction, cfg.split.seed, "images")
    ):
        splits[i] = split
    strata = [records[i].defect for i in test]
    if len(test) < 2 and not any(records[i].label for i in test):
        # normal-only: no test folder, or a single test/good image (it goes to test)
        return [s or "test" for s in splits]
    for i, split in zip(
        test, split_labelled(strata, cfg.split.tune_fraction, cfg.split.seed, "images")
    ):
        splits[i] = split
    return splits


def _reference_image(
    records: Iterable[ImageRecord], prep: ImagePrep
) -> tuple[np.ndarray | None, str | None]:
    """The alignment reference: the first decodable normal training image, preprocessed."""
    if prep.align == "none":
        return None, None
    for record in records:
        loaded = load_file(record.path, record.origin, None, prep, None)
        if loaded.error is None:
            return loaded.frame, record.origin
    return None, None


def prepare_images(
    name: str,
    root: Path,
    cfg: PrepareConfig,
    writer: PreparedWriter,
    *,
    workers: int,
    progress: bool,
    extra_dir: Path | None = None,
) -> dict[str, Any]:
    """Stream an MVTec-layout folder into ``writer``; returns the manifest (without its hash)."""
    source = scan_images(root, extra_dir)
    warn_ignored(name, source.ignored, IMAGE_EXTENSIONS)
    prep = cfg.image
    splits = _image_splits(source.records, cfg)
    train = [r for r, s in zip(source.records, splits) if s == "train"]
    reference, reference_origin = _reference_image(train, prep)
    bad = BadFiles(len(source.records), cfg.max_bad_fraction, name)
    items: list[Item] = []
    zero_mask = np.zeros(prep.size, dtype=np.uint8)

    def load(record: ImageRecord) -> Loaded:
        return load_file(
            record.path, record.origin, record.mask_path, prep, reference, cfg.max_image_pixels
        )

    with progress_bar(len(source.records), f"prepare {name}", progress) as bar:
        for record, split, loaded in zip(
            source.records, splits, ordered_map(load, source.records, workers)
        ):
            bar.update()
            if loaded.error is not None:
                bad.add(record.origin, loaded.error)
                continue
            index = writer.append(loaded.frame, zero_mask if loaded.mask is None else loaded.mask)
            items.append(
                Item(
                    index=index,
                    origin=record.origin,
                    split=split,
                    label=record.label,
                    defect=record.defect,
                    has_mask=loaded.mask is not None,
                    sha256=loaded.sha256,
                )
            )
    bad.warn()
    extra = {"reference_origin": reference_origin, "ignored_files": list(source.ignored)}
    return manifest_parts(name, root, "image", prep, cfg, items, bad, extra)
