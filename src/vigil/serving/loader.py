"""Load a model package into a scorer: a pulled folder, a package folder, or ``models:/NAME@alias``.

The scorer calls the same functions as evaluation (``vigil.data.preprocess`` for the input,
``vigil.evaluation.scoring`` / ``postprocess`` for maps and scores) with the preprocessing,
post-processing settings and threshold that travel inside the package, so serving cannot drift
from what was evaluated. A scorer is immutable once built: the alias follower swaps whole scorers,
so one request always sees one model version.
"""

from __future__ import annotations

import logging
import math
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from vigil.config import EvaluateConfig, ImagePrep, VideoPrep

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A package cannot be loaded or fails its smoke test; the message names the path."""


@dataclass(frozen=True)
class PackageFiles:
    """What the serving side needs from a package's artifacts folder."""

    root: Path  # folder holding model.json + weights.safetensors
    spec: dict[str, Any]
    prep: ImagePrep
    postprocess: EvaluateConfig
    threshold: float
    pixel_threshold: float | None
    modality: str
    fps: float | None
    # uint8 (h, w, C) prepared alignment reference shipped in the package; None: no alignment
    reference: np.ndarray | None = None


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

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "alias": self.alias,
            "run_id": self.run_id,
            "threshold": self.threshold,
            "modality": self.modality,
            "input_size": list(self.input_size),
            "channels": self.channels,
            "fps": self.fps,
            "metrics": self.metrics,
        }


@dataclass(frozen=True)
class FrameScore:
    """One scored image or frame; ``heatmap`` is a BGR uint8 (H, W, 3) overlay when asked for."""

    score: float
    is_anomaly: bool
    heatmap: np.ndarray | None = None
    error_map: np.ndarray | None = None  # float32 (H, W) post-processed error


def read_package(package_dir: Path | str) -> PackageFiles:
    """Read a package's spec, preprocessing, post-processing and threshold (no weights)."""
    from vigil.registry import package as registry_package

    try:
        root = registry_package.find_artifacts(package_dir)
        meta = registry_package.read_package_metadata(root)
        spec = meta["spec"]
        modality = spec.get("modality", "image")
        prep_cls = VideoPrep if modality == "video" else ImagePrep
        prep = prep_cls.model_validate(meta["prep"])
        postprocess = EvaluateConfig.model_validate(meta["postprocess"])
        threshold = float(meta["threshold"])
        reference = registry_package.read_reference(root, prep)
    except (OSError, ValueError, KeyError, TypeError) as error:  # ValidationError is a ValueError
        raise ModelLoadError(f"{package_dir}: unusable package metadata: {error}") from error
    return PackageFiles(
        root=root,
        spec=spec,
        prep=prep,
        postprocess=postprocess,
        threshold=threshold,
        pixel_threshold=meta.get("pixel_threshold"),
        modality=modality,
        fps=getattr(prep, "fps", None),
        reference=reference,
    )


class Scorer:
    """A loaded model with its preprocessing, post-processing and threshold.

    Thread-safe: the network is in eval mode and only read; ``max_concurrent`` bounds how many
    forward passes run at once (one per core is fastest on CPU).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        files: PackageFiles,
        info: ModelInfo,
        *,
        max_concurrent: int = 2,
    ) -> None:
        self.model = model
        self.files = files
        self.info = info
        self._slots = threading.BoundedSemaphore(max_concurrent)

    @property
    def is_video(self) -> bool:
        return self.info.modality == "video"

    def preprocess(self, image: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
        """Decoded image (H, W[, C]) as OpenCV reads it -> uint8 (h, w, C) model input.

        ``reference``: a preprocessed frame to align to when the package's prep aligns frames;
        default: the package's reference frame (the one the evaluated data was aligned to).
        """
        from vigil.data.preprocess import preprocess_frame

        if reference is None:
            reference = self.files.reference
        return preprocess_frame(image, self.files.prep, reference)

    def reconstruct(self, frame: np.ndarray) -> np.ndarray:
        """Image models: preprocessed uint8 (h, w, C) -> its reconstruction, uint8 (h, w, C)."""
        from vigil.data.preprocess import to_tensor

        with self._slots, torch.inference_mode():
            output = self.model(to_tensor(frame, self.files.prep))
        return _to_uint8(output.reconstruction[0])

    def score_images(
        self, images: Sequence[np.ndarray], *, heatmap: bool = False
    ) -> list[FrameScore]:
        """Score decoded images independently (image models; any model treats them as stills).

        ``images``: OpenCV-decoded arrays; returns one FrameScore per image.
        """
        if self.is_video:
            raise ValueError(
                f"{self.info.name} is a video model: it scores a frame from the frames before "
                "it; send a clip (/score/clip) instead of single images"
            )
        from vigil.evaluation.scoring import score_frames

        frames = np.stack([self.preprocess(image) for image in images])
        with self._slots, torch.inference_mode():
            scores = score_frames(self.model, frames, self.files.prep, self.files.postprocess)
        return [
            self._frame_score(frames[i], float(scores.scores[i]), scores.maps[i], heatmap)
            for i in range(len(frames))
        ]

    def score_clip(
        self, images: Sequence[np.ndarray], *, heatmap: bool = False
    ) -> list[FrameScore]:
        """Score a clip in time order with evaluation's own ``score_video`` (state carried,
        score smoothed); image models score each frame on its own.

        A video clip's first frame has no prediction: its score is NaN and it is never flagged.
        """
        if not self.is_video:
            return self.score_images(images, heatmap=heatmap)
        from vigil.evaluation.scoring import score_video

        frames = self.preprocess_clip(images)
        with self._slots, torch.inference_mode():
            scores = score_video(self.model, frames, self.files.prep, self.files.postprocess)
        return [
            self._frame_score(frames[i], float(scores.scores[i]), scores.maps[i], heatmap)
            for i in range(len(frames))
        ]

    def preprocess_clip(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Decoded frames -> uint8 (T, h, w, C), aligned when prep aligns: to the package's
        reference frame, or (older packages without one) to the clip's first frame."""
        first = self.preprocess(images[0])
        reference = self.files.reference
        if reference is None and self.files.prep.align != "none":
            reference = first
        return np.stack([first, *(self.preprocess(image, reference) for image in images[1:])])

    def stream(self, smoothing_window: int | None = None) -> FrameStream:
        """A stateful per-frame scorer for one stream (one per camera/file)."""
        return FrameStream(self, smoothing_window)

    def _frame_score(
        self, frame: np.ndarray, score: float, error_map: np.ndarray, heatmap: bool
    ) -> FrameScore:
        overlay_image = self.heatmap(frame, error_map) if heatmap else None
        return FrameScore(
            score=score,
            is_anomaly=bool(score >= self.info.threshold),  # as the package decides
            heatmap=overlay_image,
            error_map=np.asarray(error_map, dtype=np.float32),
        )

    def heatmap(self, frame: np.ndarray, error_map: np.ndarray) -> np.ndarray:
        """uint8 (h, w, C) input + float (h, w) error -> BGR uint8 (h, w, 3) colorized overlay."""
        from vigil.evaluation.postprocess import overlay

        # As evaluation draws it: red at twice the pixel threshold, so colors compare across frames.
        pixel = self.files.pixel_threshold
        vmax = 2.0 * pixel if pixel and pixel > 0 else float(np.max(error_map)) or 1.0
        return overlay(frame, np.asarray(error_map), vmax)


class FrameStream:
    """Per-frame scoring of one stream: carries ConvLSTM state and a trailing moving average.

    ``push(image)`` preprocesses the frame, scores it against the prediction made from the frames
    before it (video models) or on its own (image models), and returns its FrameScore, whose
    ``score`` is the smoothed score compared with the threshold. Frame by frame, this computes
    exactly what ``vigil.evaluation.scoring.score_video`` computes over a whole clip (a test holds
    them equal): the first frame of a video stream has no score (NaN).
    """

    def __init__(self, scorer: Scorer, smoothing_window: int | None = None) -> None:
        self.scorer = scorer
        self.window = smoothing_window or scorer.files.postprocess.smoothing_window
        self._recent: deque[float] = deque(maxlen=self.window)
        self._state: Any = None
        self._prediction: torch.Tensor | None = None
        self._predicted_error: torch.Tensor | None = None
        self._reference: np.ndarray | None = scorer.files.reference
        self.last_frame: np.ndarray | None = None  # uint8 (h, w, C) preprocessed input
        self.last_prediction: np.ndarray | None = None  # uint8 (h, w, C) what was predicted
        self.last_raw: float = math.nan  # unsmoothed score of the last frame

    def push(self, image: np.ndarray, *, heatmap: bool = False) -> FrameScore:
        frame = self.scorer.preprocess(image, self._reference)
        if self._reference is None and self.scorer.files.prep.align != "none":
            self._reference = frame  # older package without a reference: the first frame
        raw, error_map = self._score(frame)
        self.last_raw = raw
        if math.isfinite(raw):
            self._recent.append(raw)
        smoothed = float(np.mean(self._recent)) if self._recent else math.nan
        self.last_frame = frame
        return self.scorer._frame_score(frame, smoothed, error_map, heatmap)

    def _score(self, frame: np.ndarray) -> tuple[float, np.ndarray]:
        """uint8 (h, w, C) -> (raw frame score or NaN, post-processed error map (h, w))."""
        from vigil.data.preprocess import to_tensor
        from vigil.evaluation.postprocess import image_score, smooth_map

        scorer = self.scorer
        cfg = scorer.files.postprocess
        if not scorer.is_video:
            from vigil.evaluation.scoring import score_frames

            with scorer._slots, torch.inference_mode():
                scores = score_frames(scorer.model, frame[None], scorer.files.prep, cfg)
            return float(scores.raw[0]), np.asarray(scores.maps[0])
        x = to_tensor(frame[None], scorer.files.prep)  # (1, C, h, w)
        raw_map = np.zeros(x.shape[-2:], dtype=np.float32)
        score = math.nan
        with scorer._slots, torch.inference_mode():
            if self._prediction is None:
                self.last_prediction = None
            else:
                error = (self._prediction - x).pow(2).mean(dim=1)[0].float().numpy()
                predicted = None
                if cfg.use_error_head and self._predicted_error is not None:
                    predicted = self._predicted_error[0, 0].float().numpy()
                raw_map = smooth_map(error, cfg, predicted)
                score = float(image_score(raw_map, cfg))
                self.last_prediction = _to_uint8(self._prediction[0])
            if self._state is None:
                self._state = scorer.model.init_state(1, x.shape[-2], x.shape[-1])
            self._prediction, self._predicted_error, self._state = scorer.model.step_full(
                x, self._state
            )
        return score, raw_map


def _to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """float (C, h, w) in [0, 1] -> uint8 (h, w, C)."""
    array = tensor.clamp(0, 1).permute(1, 2, 0).numpy()
    return (array * 255.0 + 0.5).astype(np.uint8)


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
    from vigil.serving.pull import PACKAGE_DIR, parse_model_uri, pull, read_manifest

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
    return scorer_from_package(
        package, manifest, max_concurrent=max_concurrent, smoke_test=smoke_test
    )


def scorer_from_package(
    package: Path,
    manifest: dict[str, Any],
    *,
    max_concurrent: int = 2,
    smoke_test: bool = True,
) -> Scorer:
    """Build a Scorer from a package folder and its manifest (name, version... may be absent)."""
    from vigil.models import load_trained

    files = read_package(package)
    try:
        model, _ = load_trained(files.root)
    except Exception as error:
        raise ModelLoadError(f"{files.root}: cannot load the network: {error}") from error
    model.eval()
    height, width = files.prep.size
    info = ModelInfo(
        name=str(manifest.get("name") or files.spec.get("name") or package.name),
        version=str(manifest.get("version") or "local"),
        alias=manifest.get("alias"),
        run_id=manifest.get("run_id"),
        threshold=files.threshold,
        modality=files.modality,
        input_size=(int(height), int(width)),
        channels=int(files.prep.channels),
        fps=files.fps,
        metrics=dict(manifest.get("metrics") or {}),
    )
    scorer = Scorer(model, files, info, max_concurrent=max_concurrent)
    if smoke_test:
        _smoke_test(scorer)
    return scorer


def _smoke_test(scorer: Scorer) -> None:
    """Score two blank frames; a package that cannot do that is refused at load time."""
    height, width = scorer.info.input_size
    blank = np.full((height, width, 3), 128, dtype=np.uint8)
    started = time.perf_counter()
    try:
        results = scorer.score_clip([blank, blank])
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
