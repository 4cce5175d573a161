"""Load a model package into a scorer: a pulled folder, a package folder, or ``models:/NAME@alias``.

A scorer is the package's ``Detector`` (``vigil.detector``: the anomaly score defined once) with
what serving adds: the registry facts (``ModelInfo``) and a bound on concurrent forward passes.
A scorer is immutable once built: the alias follower swaps whole scorers, so one request always
sees one model version.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vigil.detector import Detector, ItemScore, StreamState

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A package cannot be loaded or fails its smoke test; the message names the path."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    alias: str | None
    run_id: str | None
    threshold: float
    modality: str
    input_size: tuple[int, int]  # (height, width) after preprocessing
    channels: int
    fps: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    family: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "alias": self.alias,
            "run_id": self.run_id,
            "threshold": self.threshold,
            "modality": self.modality,
            "family": self.family,
            "input_size": list(self.input_size),
            "channels": self.channels,
            "fps": self.fps,
            "metrics": self.metrics,
        }


class Scorer:
    """A loaded detector with its registry facts.

    Thread-safe: the network is in eval mode and only read; ``max_concurrent`` bounds how many
    forward passes run at once (one per core is fastest on CPU).
    """

    def __init__(self, detector: Detector, info: ModelInfo, *, max_concurrent: int = 2) -> None:
        self.detector = detector
        self.info = info
        self._slots = threading.BoundedSemaphore(max_concurrent)

    @property
    def is_video(self) -> bool:
        return self.detector.is_video

    def score_images(
        self, images: Sequence[np.ndarray], *, heatmap: bool = False
    ) -> list[ItemScore]:
        """Score decoded images independently (image models); overlays at each input's size."""
        if self.is_video:
            raise ValueError(
                f"{self.info.name} is a video model: it scores a frame from the frames before "
                "it; send a clip (/score/clip) instead of single images"
            )
        with self._slots:
            return self.detector.score(images, overlay=heatmap)

    def score_clip(
        self, images: Sequence[np.ndarray], *, heatmap: bool = False
    ) -> list[ItemScore]:
        """Score a clip in time order (video: state carried, score smoothed; a frame the model
        cannot score yet has a NaN score and is never flagged); image models score each frame."""
        with self._slots:
            return self.detector.score(images, overlay=heatmap)

    def stream(self) -> FrameStream:
        """A stateful per-frame scorer for one stream (one per camera/file)."""
        return FrameStream(self)


class FrameStream:
    """Per-frame scoring of one stream through ``Detector.stream`` (the same step and moving
    average as evaluation's clips). ``push`` returns the frame's ItemScore; ``last_frame`` is
    the prepared frame (uint8 (h, w, C)) and ``last_prediction`` what the network expected of it
    (None while it cannot score yet)."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer
        detector = scorer.detector
        self._state = StreamState(reference=detector.reference)
        self.last_frame: np.ndarray | None = None
        self.last_prediction: np.ndarray | None = None

    def push(self, image: np.ndarray, *, heatmap: bool = False) -> ItemScore:
        """A decoded frame -> its ItemScore; ``heatmap``: overlay on the prepared frame."""
        detector = self.scorer.detector
        frame = detector.prepare(image, self._state.reference)
        if self._state.reference is None and detector.prep.align != "none":
            self._state.reference = frame  # no shipped reference: align to the first frame
        with self.scorer._slots:
            result, self._state = detector.stream(frame, self._state, reconstruction=True)
        self.last_frame = frame
        self.last_prediction = result.reconstruction
        return detector.with_overlay(result) if heatmap else result


def load_scorer(
    source: str | Path,
    *,
    max_concurrent: int = 2,
    cache_dir: Path | str | None = None,
    smoke_test: bool = True,
) -> Scorer:
    """A pulled folder (with manifest.json), a bare package folder, or ``models:/NAME@alias``.

    Registry URIs are pulled (and verified) into ``cache_dir`` (default: a temporary folder).
    ``smoke_test`` scores one blank input so a broken package fails here, not on a request.
    """
    from vigil.serving.pull import parse_model_uri, pull
    from vigil.serving.install import PACKAGE_DIR, read_manifest

    if isinstance(source, str) and source.startswith("models:/"):
        name, alias, version = parse_model_uri(source)
        if cache_dir is None:  # everything is in memory once loaded: the copy can go
            with tempfile.TemporaryDirectory(prefix="vigil-model-") as tmp:
                target = Path(tmp) / "model"
                pull(name, alias or "champion", target, version=version)
                return load_scorer(target, max_concurrent=max_concurrent, smoke_test=smoke_test)
        target = Path(cache_dir) / f"{name}-{alias or version}"
        pull(name, alias or "champion", target, version=version)
        source = target
    path = Path(source)
    if not path.is_dir():
        raise ModelLoadError(f"{path}: model folder not found (run `vigil pull` first)")
    manifest = read_manifest(path) or {}
    package = path / PACKAGE_DIR if (path / PACKAGE_DIR).is_dir() else path
    verify_installed(package, manifest)
    return scorer_from_package(
        package, manifest, max_concurrent=max_concurrent, smoke_test=smoke_test
    )


def verify_installed(package: Path, manifest: dict[str, Any]) -> None:
    """Before anything in ``package`` loads: its files, promotion basis and (with a signing key)
    signature against its pulled manifest (``vigil.registry.integrity``). A bare package folder
    without a manifest (development) loads only while no signing key is configured."""
    from vigil.registry.integrity import (
        KEY_ENV,
        IntegrityError,
        Release,
        signing_key,
        verify_release,
    )

    if not manifest:
        if signing_key() is not None:
            raise ModelLoadError(
                f"{package}: no manifest.json (not installed by `vigil pull`), and {KEY_ENV} is "
                "set: only verified, signed packages may load"
            )
        log.warning("%s: no manifest.json: loading an unverified package folder", package)
        return
    try:
        verify_release(package, Release.from_manifest(manifest))
    except (IntegrityError, OSError) as error:
        raise ModelLoadError(str(error)) from error


def scorer_from_package(
    package: Path,
    manifest: dict[str, Any],
    *,
    max_concurrent: int = 2,
    smoke_test: bool = True,
) -> Scorer:
    """Build a Scorer from a package folder and its manifest (name, version... may be absent)."""
    from vigil.registry.package import PackageError, load_detector

    try:
        detector = load_detector(package)
    except PackageError as error:
        version = manifest.get("version")
        which = f"{manifest.get('name')} version {version}: " if version else ""
        raise ModelLoadError(f"{which}{error}") from error
    except Exception as error:
        raise ModelLoadError(f"{package}: cannot load the detector: {error}") from error
    prep = detector.prep
    info = ModelInfo(
        name=str(manifest.get("name") or detector.record.dataset or package.name),
        version=str(manifest.get("version") or "local"),
        alias=manifest.get("alias"),
        run_id=manifest.get("run_id"),
        threshold=detector.threshold,
        modality=detector.record.modality,
        input_size=(int(prep.size[0]), int(prep.size[1])),
        channels=int(prep.channels),
        fps=getattr(prep, "fps", None),
        metrics=dict(manifest.get("metrics") or {}),
        family=detector.record.family,
    )
    scorer = Scorer(detector, info, max_concurrent=max_concurrent)
    if smoke_test:
        _smoke_test(scorer)
    return scorer


#: Frames of the load-time smoke test: enough for any video family to score its last frame.
SMOKE_FRAMES = 8


def _smoke_test(scorer: Scorer) -> None:
    """Score blank frames; a package that cannot do that is refused at load time."""
    height, width = scorer.info.input_size
    blank = np.full((height, width, 3), 128, dtype=np.uint8)
    started = time.perf_counter()
    try:
        results = scorer.score_clip([blank] * (SMOKE_FRAMES if scorer.is_video else 1))
    except Exception as error:
        raise ModelLoadError(
            f"{scorer.info.name} version {scorer.info.version}: smoke test failed: {error}"
        ) from error
    if not np.isfinite(results[-1].score):
        raise ModelLoadError(
            f"{scorer.info.name} version {scorer.info.version}: smoke test gave a non-finite score"
        )
    log.debug(
        "smoke test of %s v%s: %.1f ms",
        scorer.info.name,
        scorer.info.version,
        1000 * (time.perf_counter() - started),
    )


def encode_png(image: np.ndarray) -> bytes:
    """BGR/gray uint8 image -> PNG bytes."""
    ok, buffer = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buffer.tobytes()
