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

One file never halts ingest: whatever is wrong with an item (it does not decode, its header
claims more pixels than ``prepare.max_image_pixels``, its name is not valid UTF-8, it is a
hidden dot-file or a symbolic link) is named in its quarantine reason and the rest are ingested;
``dvc add`` only ever sees items that passed. An item modified in the last ``settle_s`` seconds
(``configs/retrain.yaml``) or whose size or mtime changes while it is checked is still being
written: it is left in the inbox for the next cycle, not quarantined.

Modules: ``inbox_items`` (the dataset's folders, validating one item), ``plan`` (one move per
item), ``moves`` (moves, the journal, quarantine reasons), ``dvc_tools`` (dvc subprocesses,
hashes, atomic JSON); this one runs an ingest. Their public names are re-exported here.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vigil.config import Params
from vigil.scheduling import RetrainConfig
from vigil.scheduling.dvc_tools import (
    DvcError,
    dvc_env,
    dvc_file,
    run_dvc,
    sha256_file,
    tracked_version,
    utc_now,
    write_json_atomic,
)
from vigil.scheduling.inbox_items import (
    DEFAULT_EXTRA_DIR,
    DatasetFolders,
    Expected,
    InvalidItem,
    dataset_folders,
    display_name,
    expected_shape,
    extra_root,
    known_hashes,
    validate_item,
)
from vigil.scheduling.moves import (
    Journal,
    Move,
    _unique,
    _write_reason,
    content_digest,
    move_item,
    same_content,
)
from vigil.scheduling.plan import plan_moves

__all__ = [
    "DEFAULT_EXTRA_DIR",
    "DatasetFolders",
    "DvcError",
    "Expected",
    "IngestError",
    "IngestReport",
    "InvalidItem",
    "Journal",
    "Move",
    "content_digest",
    "dataset_folders",
    "dvc_env",
    "dvc_file",
    "expected_shape",
    "extra_root",
    "ingest_all",
    "ingest_dataset",
    "journal_path",
    "known_hashes",
    "move_item",
    "plan_moves",
    "run_dvc",
    "same_content",
    "sha256_file",
    "tracked_version",
    "utc_now",
    "validate_item",
    "write_json_atomic",
]

log = logging.getLogger(__name__)


class IngestError(RuntimeError):
    """Ingest could not version the inbox; data and DVC state were left as before."""


# --- ingest ----------------------------------------------------------------------------------


@dataclass
class IngestReport:
    dataset: str
    ingested: list[str] = field(default_factory=list)  # destination paths
    quarantined: dict[str, str] = field(default_factory=dict)  # item name -> reason
    version_before: str | None = None
    version_after: str | None = None
    resumed: bool = False  # an interrupted ingest was replayed first
    waiting: list[str] = field(default_factory=list)  # still being written: left for next cycle

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
        untracked = _git(root, "rm", "-r", "--cached", "--ignore-unmatch", "--", str(extra))
        try:
            run_dvc(root, "add", str(extra.relative_to(root)))
        except DvcError:
            files = [line[4:-1] for line in untracked.splitlines() if line.startswith("rm '")]
            if files:
                _git(root, "add", "-f", "--", *files)
            raise


def _git(root: Path, *args: str) -> str:
    """``git ARGS`` in ``root``; its stdout, or "" when it fails (e.g. not a git repository).

    Used for the placeholder (``data/extra/<dataset>/.gitkeep``) that git tracks so a clone has
    the folder the prepare stage depends on: DVC refuses to add a folder git tracks files in,
    so they leave git's index (not the disk) before ``dvc add``, and come back if it fails."""
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
    return done.stdout if done.returncode == 0 else ""


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
            report.quarantined[display_name(Path(move.src).name)] = move.reason


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
    moves = plan_moves(
        folders,
        spec,
        root / spec.inbox,
        root / cfg.quarantine / dataset,
        max_pixels=params.prepare.max_image_pixels,
        waiting=report.waiting,
    )
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
