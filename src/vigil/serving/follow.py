"""Follow a registry alias: when ``champion`` moves, load the new version and swap it in.

``ModelHolder.current`` is one immutable Scorer; a request reads it once and uses that object to
the end, so it never mixes versions, and every answer names the version that produced it. The
follower polls the alias every ``poll_interval_s`` on a daemon thread, pulls and smoke-tests the
new version off the request path, and replaces the reference in one assignment. A version that
fails to pull, verify or load is refused with a logged reason and remembered, so it is not
retried on every poll; the old scorer keeps serving. When the registry cannot be reached the
service keeps serving and reports degraded readiness.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from vigil.serving.loader import Scorer, load_scorer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegistryStatus:
    reachable: bool | None  # None: not checked (following is off)
    checked_at: float | None = None
    error: str | None = None
    refused: dict[str, str] | None = None  # version -> reason it was refused


class ModelHolder:
    """The scorer that answers requests now; swapped atomically by the follower."""

    def __init__(self, scorer: Scorer) -> None:
        self._scorer = scorer
        self._lock = threading.Lock()
        self.registry = RegistryStatus(reachable=None)

    @property
    def current(self) -> Scorer:
        return self._scorer

    def swap(self, scorer: Scorer) -> Scorer:
        """Install ``scorer``; returns the previous one (requests holding it finish on it)."""
        with self._lock:
            previous, self._scorer = self._scorer, scorer
        log.info(
            "now serving %s version %s (was version %s)",
            scorer.info.name,
            scorer.info.version,
            previous.info.version,
        )
        return previous


class AliasFollower:
    """Polls ``name@alias`` and swaps new versions into ``holder``.

    ``model_dir``: pull new versions into this folder (atomic replace; the loaded scorer lives in
    memory, so replacing its files is safe); default: a fresh temporary folder per version.
    """

    def __init__(
        self,
        holder: ModelHolder,
        name: str,
        alias: str,
        *,
        interval_s: float,
        model_dir: Path | str | None = None,
        max_concurrent: int = 2,
    ) -> None:
        self.holder = holder
        self.name = name
        self.alias = alias
        self.interval_s = interval_s
        self.model_dir = Path(model_dir) if model_dir else None
        self.max_concurrent = max_concurrent
        self._refused: dict[str, str] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by poll_now: check before the interval is up
        self._thread: threading.Thread | None = None

    def start(self) -> AliasFollower:
        self._thread = threading.Thread(target=self._run, name="vigil-alias-follower", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def poll_now(self) -> None:
        """Check the alias at once on the follower's thread (a registry webhook said it moved),
        without waiting for the poll interval; polling stays the fallback. Returns at once."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            self.poll_once()

    def poll_once(self) -> str | None:
        """Check the alias once; returns the version now served when it changed, else None."""
        from vigil.tracking import TrackingError, connect
        from vigil.serving.pull import PullError, resolve_version

        try:
            client = connect()
        except TrackingError as error:
            self._set_status(False, str(error))
            log.warning(
                "registry unreachable; still serving version %s: %s",
                self.holder.current.info.version,
                error,
            )
            return None
        try:
            found = resolve_version(client, self.name, self.alias)
        except PullError as error:  # reachable, but the alias is gone: keep what we have
            self._set_status(True, str(error))
            log.warning("%s; still serving version %s", error, self.holder.current.info.version)
            return None
        self._set_status(True, None)
        version = str(found.version)
        if version == self.holder.current.info.version or version in self._refused:
            return None
        log.info("%s@%s moved to version %s: loading it", self.name, self.alias, version)
        try:
            scorer = self._load(version)
        except Exception as error:  # noqa: BLE001 - any failure: refuse, keep serving the old one
            reason = f"{type(error).__name__}: {error}"
            if _is_permanent(error):  # retrying cannot help: remember, do not pull it again
                self._refused[version] = reason
            self._set_status(True, None)
            log.error(
                "refusing %s version %s, still serving version %s: %s",
                self.name,
                version,
                self.holder.current.info.version,
                reason,
            )
            return None
        self.holder.swap(scorer)
        return version

    def _load(self, version: str) -> Scorer:
        """Pull ``version`` into a staging folder, load and smoke-test it, then install it."""
        from vigil.serving.pull import pull
        from vigil.serving.install import replace_dir

        if self.model_dir is None:  # nothing to keep on disk: the scorer lives in memory
            with tempfile.TemporaryDirectory(prefix="vigil-model-") as tmp:
                target = Path(tmp) / "model"
                pull(self.name, self.alias, target, version=version)
                scorer = load_scorer(target, max_concurrent=self.max_concurrent)
            return _with_alias(scorer, self.alias)
        staged = self.model_dir.with_name(f".{self.model_dir.name}.v{version}")
        pull(self.name, self.alias, staged, version=version)
        scorer = load_scorer(staged, max_concurrent=self.max_concurrent)
        replace_dir(staged, self.model_dir)  # a restart now loads the version being served
        return _with_alias(scorer, self.alias)

    def _set_status(self, reachable: bool, error: str | None) -> None:
        self.holder.registry = RegistryStatus(
            reachable=reachable,
            checked_at=time.time(),
            error=error,
            refused=dict(self._refused) or None,
        )


def _is_permanent(error: Exception) -> bool:
    """A tampered or unloadable package stays broken; a failed download may work next time."""
    from vigil.serving.loader import ModelLoadError
    from vigil.serving.pull import ChecksumMismatchError

    return isinstance(error, (ModelLoadError, ChecksumMismatchError))


def _with_alias(scorer: Scorer, alias: str) -> Scorer:
    """Pulling by version leaves the manifest's alias empty; record the alias followed."""
    from dataclasses import replace

    scorer.info = replace(scorer.info, alias=alias)
    return scorer
