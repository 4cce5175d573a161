"""The prepare stage: a source folder -> ``data/prepared/<name>/`` (see ``vigil.data.prepared``).

Streaming: items are decoded and preprocessed by a small thread pool (OpenCV releases the GIL)
in a bounded window and appended to the output arrays in order, so memory does not grow with
the dataset. Bad files (unreadable, corrupt, zero bytes, unsupported channels, mask size
mismatch) are skipped, listed in a warning and counted in the manifest while they stay at or
below ``prepare.max_bad_fraction`` of the source files; beyond that the stage fails with the
list. Everything is deterministic: sorted inputs, seeded splits, no timestamps in the output.

The stage is split by job: ``prepare_items`` (load one file, bad-file accounting, thread pool),
``prepare_images`` / ``prepare_video`` (one per modality), ``prepare_manifest`` (counts, checks,
content hash) and this module, the driver. The public names stay importable from here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vigil.config import DatasetSpec, PrepareConfig
from vigil.data.ingest import IngestError
from vigil.data.prepare_images import prepare_images
from vigil.data.prepare_items import PrepareError, default_workers, log, ordered_map, warn_ignored
from vigil.data.prepare_manifest import content_hash
from vigil.data.prepare_video import prepare_video
from vigil.data.prepared import PreparedWriter
from vigil.data.splits import SplitError
from vigil.data.video import VideoDecodeError

__all__ = [
    "PrepareError",
    "PrepareResult",
    "default_workers",
    "ordered_map",
    "prepare_dataset",
    "prepare_images",
    "prepare_video",
    "resolve_source",
    "warn_ignored",
]


@dataclass(frozen=True)
class PrepareResult:
    root: Path
    n_items: int
    n_bad: int
    counts: dict[str, Any]
    content_hash: str
    seconds: float


def resolve_source(name: str, spec: DatasetSpec, base_dir: Path) -> tuple[Path, Path | None]:
    """(source folder, labels CSV or None), relative paths taken from ``base_dir``."""
    root = Path(spec.source)
    root = root if root.is_absolute() else base_dir / root
    if not root.is_dir():
        raise PrepareError(
            f"data.datasets.{name}.source: {spec.source!r} does not exist or is not a folder "
            f"(looked at {root}); run `dvc repro generate` for the built-in data or fix the path"
        )
    labels = None
    if spec.labels_csv:
        labels = Path(spec.labels_csv)
        labels = labels if labels.is_absolute() else base_dir / labels
        if not labels.is_file():
            raise PrepareError(
                f"data.datasets.{name}.labels_csv: {spec.labels_csv!r} not found ({labels})"
            )
    return root, labels


def prepare_dataset(
    name: str,
    spec: DatasetSpec,
    cfg: PrepareConfig,
    out_dir: Path | str,
    *,
    base_dir: Path | str = ".",
    workers: int | None = None,
    progress: bool = True,
    extra_dir: Path | str | None = None,
) -> PrepareResult:
    """Prepare one dataset into ``out_dir`` (written atomically).

    Raises ``PrepareError`` naming the file, folder or key for every problem with the data.

    ``extra_dir``: normal items added by ``vigil ingest`` (``data/extra/<name>``), if any.
    """
    start = time.perf_counter()
    root, labels = resolve_source(name, spec, Path(base_dir))
    extra = Path(extra_dir) if extra_dir is not None else None
    workers = workers or default_workers()
    prep = cfg.image if spec.modality == "image" else cfg.video
    with PreparedWriter(out_dir, (*prep.size, prep.channels)) as writer:
        try:
            if spec.modality == "image":
                manifest = prepare_images(
                    name, root, cfg, writer, workers=workers, progress=progress, extra_dir=extra
                )
            else:
                manifest = prepare_video(
                    name,
                    root,
                    labels,
                    cfg,
                    writer,
                    workers=workers,
                    progress=progress,
                    extra_dir=extra,
                )
        except (IngestError, SplitError, VideoDecodeError) as error:
            # VideoDecodeError here is source-wide (a bad fps.txt while scanning frame folders);
            # a bad video file is counted as a bad file inside prepare_video.
            raise PrepareError(f"dataset {name!r}: {error}") from None
        manifest["source"] = spec.source  # as configured, not the machine's absolute path
        manifest["content_hash"] = content_hash(manifest, writer.data_hash())
        writer.commit(manifest)
    seconds = time.perf_counter() - start
    log.info(
        "prepared %r: %d items (%d bad files skipped) in %.1f s -> %s",
        name,
        len(manifest["items"]),
        len(manifest["bad_files"]),
        seconds,
        out_dir,
    )
    return PrepareResult(
        root=Path(out_dir),
        n_items=len(manifest["items"]),
        n_bad=len(manifest["bad_files"]),
        counts=manifest["counts"],
        content_hash=manifest["content_hash"],
        seconds=seconds,
    )
