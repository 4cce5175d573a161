"""Planning an ingest: every inbox item checked, one move each (into the dataset or quarantine).

No item stops the others: whatever is wrong with one becomes its quarantine reason (named, under
a UTF-8 name); items still being written are left for the next cycle. See ``vigil.scheduling.inbox``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from vigil.data.ingest import natural_key
from vigil.data.preprocess import DEFAULT_MAX_IMAGE_PIXELS
from vigil.scheduling import InboxSpec
from vigil.scheduling.inbox_items import (
    DatasetFolders,
    InvalidItem,
    display_name,
    expected_shape,
    item_state,
    known_hashes,
    newest_mtime,
    validate_item,
)
from vigil.scheduling.moves import Move, _ingest_name, _unique

log = logging.getLogger("vigil.scheduling.inbox")


def _inbox_items(inbox: Path) -> list[Path]:
    """Every top-level entry, hidden ones too (they are quarantined with a reason that says so,
    not skipped silently forever)."""
    if not inbox.is_dir():
        return []
    return sorted(inbox.iterdir(), key=natural_key)


def _quarantine_move(item: Path, reason: str, quarantine: Path, taken: set[Path]) -> Move:
    """A move to ``quarantine`` under a UTF-8 name that collides with nothing planned."""
    dst = _unique(quarantine / (display_name(item.name).lstrip(".") or "unnamed"))
    while dst in taken:
        dst = _unique(dst.with_name(f"{dst.stem}~x{dst.suffix}"))
    taken.add(dst)
    return Move(str(item), str(dst), "quarantine", reason=reason)


def plan_moves(
    folders: DatasetFolders,
    spec: InboxSpec,
    inbox: Path,
    quarantine: Path,
    *,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    waiting: list[str] | None = None,
) -> list[Move]:
    """Validate every inbox item; one ``Move`` each (to the extra folder or to quarantine).

    Whatever is wrong with one item becomes its quarantine reason; no item stops the others.
    Items still being written get no move (their names go to ``waiting``, for the next cycle):
    an item must keep its size and mtime for ``spec.settle_s`` seconds (items modified less
    than that ago are watched that long, once for all) and while it is checked.
    """
    items = _inbox_items(inbox)
    if not items:
        return []
    expected = expected_shape(folders, spec)
    known = known_hashes(folders)
    states = _settled_states(items, spec.settle_s)
    seen: dict[str, str] = {}
    moves = []
    taken: set[Path] = set()
    for item in items:
        name = display_name(item.name)
        state = item_state(item)
        if state != states[item]:
            _wait(name, f"it changed within settle_s={spec.settle_s:g} s", waiting)
            continue
        try:
            digest = validate_item(
                item, folders.modality, expected, spec.min_frames, known, max_pixels
            )
            if digest in known:
                raise InvalidItem(f"{name}: already in the dataset (same content hash)")
            if digest in seen:
                raise InvalidItem(f"{name}: duplicate of {seen[digest]} in this inbox")
        except (InvalidItem, OSError, ValueError) as error:
            if item_state(item) != state:
                _wait(name, "it changed while it was checked", waiting)
                continue
            reason = str(error)
            if not isinstance(error, InvalidItem):  # anything else is still this item's problem
                reason = f"{name}: cannot be checked ({type(error).__name__}: {error})"
            moves.append(_quarantine_move(item, reason, quarantine, taken))
            continue
        if item_state(item) != state:
            _wait(name, "it changed while it was checked", waiting)
            continue
        seen[digest] = name
        dst = _ingest_name(item, digest, folders.extra)
        moves.append(Move(str(item), str(dst), "ingest", sha256=digest))
    return moves


def _settled_states(items: list[Path], settle_s: float) -> dict[Path, tuple]:
    """Each item's ``item_state``, taken ``settle_s`` seconds after the newest modification
    among them (one wait for all, none when every item is older): an item whose state differs
    from this one when it is checked is still being written."""
    states = {item: item_state(item) for item in items}
    newest = max((newest_mtime(state) for state in states.values()), default=0.0)
    pause = settle_s - (time.time() - newest)
    if pause > 0:
        time.sleep(min(pause, settle_s))
    return states


def _wait(name: str, why: str, waiting: list[str] | None) -> None:
    log.info("%s: still being written (%s): left in the inbox for the next cycle", name, why)
    if waiting is not None:
        waiting.append(name)
