"""`vigil ingest`: validate inbox items, version the good ones with DVC, quarantine the rest.

For dataset ``D`` with inbox ``I``:

- every top-level entry of ``I`` is one item: an image file (image datasets), or a video file or
  a folder of frames = one clip (video datasets);
- an item is valid when it decodes (the same ``decode_image`` / ``read_video`` as `prepare`), has
  the dataset's frame size and channel count, is not a duplicate of another inbox item by content
  hash, and is not already in the dataset (sha256 against every file of the source and of the
  extra folder);
- valid items move to ``<extra_dir>/D/`` (images and video files flat, frame folders under
  ``frames/<clip>/``, names suffixed with their hash so nothing collides), then
  ``dvc add <extra_dir>/D`` records the new data version in ``<extra_dir>/D.dvc``;
- invalid items move to ``<quarantine>/D/`` with ``<name>.reason.txt``.

Nothing is deleted. Before the first move a journal (``<state_dir>/ingest-D.json``) lists every
planned move and the ``.dvc`` file as it was; an interrupted ingest replays the journal at the
next start (moves are idempotent), and a failed ``dvc add`` undoes the ingest moves and restores
the ``.dvc`` file, so data and DVC state always agree.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml

from vigil.atomic import atomic_write_json
from vigil.config import DatasetSpec, Params
from vigil.data.ingest import IMAGE_EXTENSIONS, natural_key
from vigil.data.preprocess import ImageDecodeError, decode_image
from vigil.data.video import VIDEO_EXTENSIONS, VideoDecodeError, read_video
from vigil.scheduling import InboxSpec, RetrainConfig

log = logging.getLogger(__name__)

DEFAULT_EXTRA_DIR = "data/extra"
_SAMPLE_EXISTING = 16  # existing normal items decoded to infer the expected size and channels
_HASH_CHUNK = 1 << 20


class IngestError(RuntimeError):
    """Ingest could not version the inbox; data and DVC state were left as before."""


class DvcError(RuntimeError):
    """A dvc command failed; the message holds its output tail."""


# --- small helpers ---------------------------------------------------------------------------


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json_atomic(path: Path, data: object) -> Path:
    """Write JSON to ``path`` via a temp file in the same folder and a rename."""
    return atomic_write_json(path, data)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def extra_root(params: Params) -> str:
    """Folder of ingested normal data: ``data.extra_dir`` in params.yaml, else ``data/extra``."""
    return getattr(params.data, "extra_dir", None) or DEFAULT_EXTRA_DIR


def dvc_env() -> dict[str, str]:
    """Environment for dvc subprocesses: analytics off, this venv first on PATH (stage cmds)."""
    env = dict(os.environ)
    env["DVC_NO_ANALYTICS"] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_dvc(root: Path, *args: str, timeout: float | None = None) -> str:
    """Run ``dvc ARGS`` (this venv's) in ``root``; returns its output, raises DvcError on failure."""
    cmd = [sys.executable, "-m", "dvc", *args]
    try:
        done = subprocess.run(
            cmd,
            cwd=root,
            env=dvc_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise DvcError(f"`dvc {' '.join(args)}` timed out after {timeout} s") from None
    output = (done.stdout or "") + (done.stderr or "")
    if done.returncode != 0:
        raise DvcError(f"`dvc {' '.join(args)}` failed (exit {done.returncode}): {output[-2000:]}")
    return output


def dvc_file(extra_dir: Path) -> Path:
    return extra_dir.with_name(extra_dir.name + ".dvc")


def tracked_version(extra_dir: Path) -> str | None:
    """The md5 DVC recorded for ``extra_dir`` (``<extra_dir>.dvc``), or None when untracked."""
    path = dvc_file(extra_dir)
    if not path.is_file():
        return None
    outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or [{}]
    return outs[0].get("md5")


# --- the dataset: where its data is and what its items look like ----------------------------


@dataclass(frozen=True)
class DatasetFolders:
    name: str
    modality: str
    source: Path  # the dataset's raw folder (all of it is hashed for "already in the dataset")
    normal: Path  # its normal training part: train/good (images) or training (video)
    extra: Path  # <extra_dir>/<name>: ingested normal items, DVC-tracked


def dataset_folders(root: Path, params: Params, name: str) -> DatasetFolders:
    spec: DatasetSpec = params.dataset(name)
    source = (root / spec.source).resolve()
    normal = source / ("train/good" if spec.modality == "image" else "training")
    return DatasetFolders(name, spec.modality, source, normal, root / extra_root(params) / name)


def _media_files(folder: Path) -> Iterable[Path]:
    if not folder.is_dir():
        return []
    media = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
    return (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in media)


def known_hashes(folders: DatasetFolders) -> set[str]:
    """sha256 of every image and video file in the dataset's source and extra folders."""
    return {sha256_file(p) for f in (folders.source, folders.extra) for p in _media_files(f)}


@dataclass(frozen=True)
class Expected:
    """What a new item must look like: frame (height, width) and channels; None = any."""

    size: tuple[int, int] | None
    channels: frozenset[int] | None


def _frame_shape(frame: np.ndarray) -> tuple[tuple[int, int], int]:
    """uint8 (H, W) or (H, W, C) -> ((H, W), C)."""
    return (int(frame.shape[0]), int(frame.shape[1])), 1 if frame.ndim == 2 else int(frame.shape[2])


def _sample_existing(folders: DatasetFolders) -> list[tuple[tuple[int, int], int]]:
    """(size, channels) of up to a few existing normal frames (first frame of each clip)."""
    shapes = []
    for folder in (folders.normal, folders.extra):
        if not folder.is_dir():
            continue
        for path in sorted(_media_files(folder), key=natural_key):
            if len(shapes) >= _SAMPLE_EXISTING:
                return shapes
            try:
                if path.suffix.lower() in VIDEO_EXTENSIONS:
                    shapes.append(_frame_shape(next(iter(read_video(path))).image))
                else:
                    shapes.append(_frame_shape(decode_image(path)))
            except (ImageDecodeError, VideoDecodeError, StopIteration):
                continue  # prepare reports bad source files; they say nothing about the shape
    return shapes


def expected_shape(folders: DatasetFolders, spec: InboxSpec) -> Expected:
    """Resolve ``auto`` against existing normal data (exact size only when all of it agrees)."""
    sample = _sample_existing(folders) if "auto" in (spec.size, spec.channels) else []
    if spec.size == "auto":
        sizes = {s for s, _ in sample}
        size = sizes.pop() if len(sizes) == 1 else None
    else:
        size = tuple(spec.size) if spec.size is not None else None
    if spec.channels == "auto":
        channels = frozenset(c for _, c in sample) or None
    else:
        channels = frozenset([spec.channels]) if spec.channels is not None else None
    return Expected(size=size, channels=channels)


# --- validating one item ---------------------------------------------------------------------


class InvalidItem(ValueError):
    """An inbox item that cannot be ingested; the message is its quarantine reason."""


def _check_frame(frame: np.ndarray, expected: Expected, what: str) -> None:
    size, channels = _frame_shape(frame)
    if expected.size is not None and size != expected.size:
        raise InvalidItem(
            f"{what}: size {size[0]}x{size[1]} (h x w) but the dataset's images are "
            f"{expected.size[0]}x{expected.size[1]}"
        )
    if expected.channels is not None and channels not in expected.channels:
        raise InvalidItem(
            f"{what}: {channels} channel(s) but the dataset has {sorted(expected.channels)}"
        )


def _validate_image(path: Path, expected: Expected) -> str:
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise InvalidItem(
            f"not an image file ({path.suffix or 'no extension'}); expected "
            f"{'/'.join(IMAGE_EXTENSIONS)}"
        )
    try:
        image = decode_image(path, path.name)
    except ImageDecodeError as error:
        raise InvalidItem(str(error)) from None
    _check_frame(image, expected, path.name)
    return sha256_file(path)


def _validate_video_file(path: Path, expected: Expected, min_frames: int) -> str:
    count = 0
    try:
        for frame in read_video(path, path.name):
            if count == 0:
                _check_frame(frame.image, expected, f"{path.name} frame 0")
            count += 1
    except VideoDecodeError as error:
        raise InvalidItem(str(error)) from None
    if count < min_frames:
        raise InvalidItem(f"{path.name}: {count} decodable frame(s), need at least {min_frames}")
    return sha256_file(path)


def _validate_frame_folder(path: Path, expected: Expected, min_frames: int, known: set[str]) -> str:
    frames = sorted(
        (p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")), key=natural_key
    )
    images = [p for p in frames if p.suffix.lower() in IMAGE_EXTENSIONS]
    others = [p.name for p in frames if p.suffix.lower() not in IMAGE_EXTENSIONS + (".txt",)]
    if others:
        raise InvalidItem(f"{path.name}/: non-image files {others[:5]} in a frame folder")
    if len(images) < min_frames:
        raise InvalidItem(f"{path.name}/: {len(images)} frame(s), need at least {min_frames}")
    if any(p.is_dir() for p in path.iterdir()):
        raise InvalidItem(f"{path.name}/: nested folders; a clip is one flat folder of frames")
    first_size = None
    digests = []
    for frame_path in images:
        try:
            image = decode_image(frame_path, f"{path.name}/{frame_path.name}")
        except ImageDecodeError as error:
            raise InvalidItem(str(error)) from None
        _check_frame(image, expected, f"{path.name}/{frame_path.name}")
        size = image.shape[:2]
        if first_size is not None and size != first_size:
            raise InvalidItem(
                f"{path.name}/{frame_path.name}: size {size} differs from the "
                f"clip's first frame {first_size}"
            )
        first_size = size
        digests.append(sha256_file(frame_path))
    if all(d in known for d in digests):
        raise InvalidItem(f"{path.name}/: every frame is already in the dataset")
    clip = hashlib.sha256()
    for frame_path, digest in zip(images, digests):
        clip.update(f"{frame_path.name}:{digest}\n".encode())
    return clip.hexdigest()


def validate_item(
    path: Path, modality: str, expected: Expected, min_frames: int, known: set[str]
) -> str:
    """Check one inbox entry; returns its content hash or raises ``InvalidItem`` with the reason."""
    if path.is_file() and path.stat().st_size == 0:
        raise InvalidItem(f"{path.name}: empty file (0 bytes)")
    if modality == "image":
        if path.is_dir():
            raise InvalidItem(f"{path.name}/: a folder in an image inbox; drop image files")
        return _validate_image(path, expected)
    if path.is_dir():
        return _validate_frame_folder(path, expected, min_frames, known)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        raise InvalidItem(
            f"{path.name}: a loose image in a video inbox; put the frames of one clip in a folder"
        )
    if path.suffix.lower() not in VIDEO_EXTENSIONS:
        raise InvalidItem(
            f"{path.name}: not a video ({'/'.join(VIDEO_EXTENSIONS)}) or frame folder"
        )
    return _validate_video_file(path, expected, min_frames)


# --- planning, moving, journaling ------------------------------------------------------------


@dataclass
class Move:
    src: str
    dst: str
    kind: str  # "ingest" | "quarantine"
    reason: str = ""
    sha256: str = ""


@dataclass
class Journal:
    dataset: str
    phase: str  # "moving" -> "versioning"; removed when done
    dvc_file: str
    dvc_file_before: str | None  # text of <extra>.dvc before this ingest (None: did not exist)
    moves: list[Move] = field(default_factory=list)
    started: str = field(default_factory=utc_now)

    @classmethod
    def load(cls, path: Path) -> Journal:
        data = json.loads(path.read_text())
        data["moves"] = [Move(**m) for m in data["moves"]]
        return cls(**data)

    def save(self, path: Path) -> None:
        write_json_atomic(path, asdict(self))


def _unique(path: Path) -> Path:
    """``path`` or ``stem~N.ext`` that does not exist yet (quarantine names never collide)."""
    candidate, n = path, 1
    while candidate.exists() or candidate.with_name(candidate.name + ".reason.txt").exists():
        n += 1
        candidate = path.with_name(f"{path.stem}~{n}{path.suffix}")
    return candidate


def content_digest(path: Path) -> str:
    """sha256 of a file, or of a folder's relative names and file hashes."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{child.relative_to(path).as_posix()}:{sha256_file(child)}\n".encode())
    return digest.hexdigest()


def same_content(a: Path, b: Path) -> bool:
    return a.is_dir() == b.is_dir() and content_digest(a) == content_digest(b)


def move_item(src: Path, dst: Path) -> None:
    """Move a file or folder; idempotent, never leaves a half-written ``dst``.

    A rename when on one filesystem; otherwise copy to a temp name beside ``dst``, rename it into
    place, then remove ``src`` (replays after a crash finish whichever step was left).
    """
    if dst.exists():
        if src.exists():
            if not same_content(src, dst):
                raise FileExistsError(f"cannot move {src} -> {dst}: a different item is there")
            shutil.rmtree(src) if src.is_dir() else src.unlink()  # copied, src not yet removed
        return
    if not src.exists():
        raise FileNotFoundError(f"cannot move {src} -> {dst}: neither exists")
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(src, dst)
        return
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
    tmp = dst.with_name(f".{dst.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    shutil.copytree(src, tmp) if src.is_dir() else shutil.copy2(src, tmp)
    os.rename(tmp, dst)
    shutil.rmtree(src) if src.is_dir() else src.unlink()


def _write_reason(move: Move, dataset: str) -> None:
    reason = Path(move.dst).with_name(Path(move.dst).name + ".reason.txt")
    reason.parent.mkdir(parents=True, exist_ok=True)
    reason.write_text(
        f"dataset: {dataset}\nitem: {Path(move.src).name}\nfrom: {move.src}\n"
        f"quarantined: {utc_now()}\nreason: {move.reason}\n"
    )


def _ingest_name(item: Path, digest: str, extra: Path) -> Path:
    if item.is_dir():
        return extra / "frames" / f"{item.name}-{digest[:8]}"
    return extra / f"{item.stem}-{digest[:8]}{item.suffix.lower()}"


def _inbox_items(inbox: Path) -> list[Path]:
    if not inbox.is_dir():
        return []
    return sorted((p for p in inbox.iterdir() if not p.name.startswith(".")), key=natural_key)


def plan_moves(
    folders: DatasetFolders, spec: InboxSpec, inbox: Path, quarantine: Path
) -> list[Move]:
    """Validate every inbox item; one ``Move`` each (to the extra folder or to quarantine)."""
    items = _inbox_items(inbox)
    if not items:
        return []
    expected = expected_shape(folders, spec)
    known = known_hashes(folders)
    seen: dict[str, str] = {}
    moves = []
    taken: set[Path] = set()
    for item in items:
        try:
            digest = validate_item(item, folders.modality, expected, spec.min_frames, known)
            if digest in known:
                raise InvalidItem(f"{item.name}: already in the dataset (same content hash)")
            if digest in seen:
                raise InvalidItem(f"{item.name}: duplicate of {seen[digest]} in this inbox")
        except InvalidItem as error:
            dst = _unique(quarantine / item.name)
            while dst in taken:
                dst = _unique(dst.with_name(f"{dst.stem}~x{dst.suffix}"))
            taken.add(dst)
            moves.append(Move(str(item), str(dst), "quarantine", reason=str(error)))
            continue
        seen[digest] = item.name
        dst = _ingest_name(item, digest, folders.extra)
        moves.append(Move(str(item), str(dst), "ingest", sha256=digest))
    return moves


# --- ingest ----------------------------------------------------------------------------------


@dataclass
class IngestReport:
    dataset: str
    ingested: list[str] = field(default_factory=list)  # destination paths
    quarantined: dict[str, str] = field(default_factory=dict)  # item name -> reason
    version_before: str | None = None
    version_after: str | None = None
    resumed: bool = False  # an interrupted ingest was replayed first

    @property
    def changed(self) -> bool:
        return self.version_before != self.version_after


def journal_path(root: Path, cfg: RetrainConfig, dataset: str) -> Path:
    return root / cfg.state_dir / f"ingest-{dataset}.json"


def _apply_moves(journal: Journal) -> None:
    for move in journal.moves:
        if move.kind == "quarantine":
            _write_reason(move, journal.dataset)
        move_item(Path(move.src), Path(move.dst))


def _version(root: Path, journal: Journal) -> None:
    """``dvc add`` the extra folder when anything was ingested into it."""
    if any(m.kind == "ingest" for m in journal.moves):
        extra = Path(journal.dvc_file).with_suffix("")
        run_dvc(root, "add", str(extra.relative_to(root)))


def _rollback(root: Path, journal: Journal) -> None:
    """Undo the ingest moves (back to the inbox) and restore the .dvc file as it was."""
    for move in journal.moves:
        if move.kind == "ingest" and Path(move.dst).exists():
            back = Path(move.src)
            if back.exists() and not same_content(back, Path(move.dst)):
                back = _unique(back)  # a new item of the same name arrived meanwhile
            move_item(Path(move.dst), back)
    dvc_path = Path(journal.dvc_file)
    if journal.dvc_file_before is None:
        dvc_path.unlink(missing_ok=True)
    else:
        dvc_path.write_text(journal.dvc_file_before)


def _finish(root: Path, journal: Journal, jpath: Path) -> None:
    """Run (or replay) a journal to the end; on a dvc failure roll back and raise IngestError."""
    if journal.phase == "moving":
        _apply_moves(journal)
        journal.phase = "versioning"
        journal.save(jpath)
    try:
        _version(root, journal)
    except DvcError as error:
        _rollback(root, journal)
        jpath.unlink(missing_ok=True)
        raise IngestError(
            f"{journal.dataset}: versioning the new data failed, ingest rolled back (items are "
            f"back in the inbox): {error}"
        ) from error
    jpath.unlink(missing_ok=True)


def _report_from(journal: Journal, report: IngestReport) -> None:
    for move in journal.moves:
        if move.kind == "ingest":
            report.ingested.append(move.dst)
        else:
            report.quarantined[Path(move.src).name] = move.reason


def ingest_dataset(root: Path, cfg: RetrainConfig, params: Params, dataset: str) -> IngestReport:
    """Validate ``dataset``'s inbox, version the valid items, quarantine the rest.

    Replays an interrupted ingest first. Raises ``IngestError`` (after rolling back) when DVC
    cannot record the new data.
    """
    root = Path(root).resolve()
    spec = cfg.datasets[dataset]
    folders = dataset_folders(root, params, dataset)
    report = IngestReport(dataset=dataset)
    jpath = journal_path(root, cfg, dataset)
    dvc_path = dvc_file(folders.extra)
    if jpath.is_file():
        log.warning("%s: resuming an interrupted ingest from %s", dataset, jpath)
        journal = Journal.load(jpath)
        report.resumed = True
        version_before_replay = None
        if journal.dvc_file_before:
            outs = (yaml.safe_load(journal.dvc_file_before) or {}).get("outs") or [{}]
            version_before_replay = outs[0].get("md5")
        report.version_before = version_before_replay
        _finish(root, journal, jpath)
        _report_from(journal, report)
    else:
        report.version_before = tracked_version(folders.extra)
    if dvc_path.is_file() and not folders.extra.is_dir():
        raise IngestError(
            f"{folders.extra}: tracked by {dvc_path.name} but missing from the workspace; run "
            "`dvc pull` (or `dvc checkout`) first, or the new version would drop the old items"
        )
    moves = plan_moves(folders, spec, root / spec.inbox, root / cfg.quarantine / dataset)
    if moves:
        journal = Journal(
            dataset=dataset,
            phase="moving",
            dvc_file=str(dvc_path),
            dvc_file_before=dvc_path.read_text() if dvc_path.is_file() else None,
            moves=moves,
        )
        journal.save(jpath)
        _finish(root, journal, jpath)
        _report_from(journal, report)
    report.version_after = tracked_version(folders.extra)
    log.info(
        "%s: ingested %d item(s), quarantined %d%s",
        dataset,
        len(report.ingested),
        len(report.quarantined),
        f" (data version {report.version_after})" if report.changed else "",
    )
    return report


def ingest_all(
    root: Path, cfg: RetrainConfig, params: Params, datasets: Iterable[str] | None = None
) -> dict[str, IngestReport]:
    """Ingest every configured inbox (or the named ones)."""
    names = list(datasets) if datasets else list(cfg.datasets)
    unknown = [n for n in names if n not in cfg.datasets]
    if unknown:
        raise ValueError(
            f"datasets {unknown} have no inbox in the retrain config "
            f"(configured: {sorted(cfg.datasets)})"
        )
    return {name: ingest_dataset(root, cfg, params, name) for name in names}
