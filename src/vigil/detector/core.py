"""THE anomaly score, once: preprocessing -> network -> post-processing -> threshold.

Evaluation, the MLflow package, ``vigil serve``, ``vigil watch`` and the benchmarks all score
through ``Detector``; there is no other copy of this chain.

- Images: ``score_prepared(frames)`` runs the network over prepared frames uint8 (N, h, w, C);
  the anomaly map (the family's ``error_map``) goes through ``postprocess.smooth_map`` and the
  image score is ``postprocess.image_score`` of it; the map shown and judged per pixel is the
  family's ``heat_map`` when it gives one (post-processed the same way), else that map.
- Video: ``stream(frame, state)`` is the one video step: the family's ``stream`` gives the
  anomaly map of frame t (None while it cannot score yet: NaN score, zero map), the map is
  post-processed as above and the frame score is a trailing moving average over the last
  ``smoothing_window`` finite raw scores. ``score_clips`` steps several clips side by side
  through that same step, so evaluation decides exactly as a live stream does.
- ``score(images)`` takes decoded inputs (OpenCV's gray or BGR), preprocesses them as the
  prepared data was (aligned to the shipped reference frame when the prep aligns), scores them,
  and draws overlays at each input's own resolution on demand.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vigil.config import EvaluateConfig
from vigil.data.preprocess import preprocess_frame, to_tensor
from vigil.detector import postprocess as post
from vigil.detector.record import (
    REFERENCE_TENSOR,
    WEIGHTS_FILE,
    DetectorError,
    DetectorRecord,
    read_record,
    write_record,
)
from vigil.models.registry import get_family
from vigil.models.folding import fold_batch_norms
from vigil.models.outputs import AnomalyOutput
from vigil.models.spec import WEIGHTS_FILE as TRAINED_WEIGHTS
from vigil.models.spec import build_model, load_network, read_spec, save_weights


@dataclass(frozen=True)
class PreparedScores:
    """Scores of prepared frames, aligned row by row.

    ``raw`` (N,) float64: the summary of each post-processed map (NaN where a video family
    could not score yet); ``scores`` (N,): what is compared with the threshold (``raw`` for
    images, its trailing moving average for video); ``maps`` (N, h, w) float32 post-processed
    anomaly maps (zero where unscored); ``valid`` (N,) bool: the network gave a map (a NaN
    score where ``valid`` is True means a broken model, which the metrics reject by name).
    """

    raw: np.ndarray
    scores: np.ndarray
    maps: np.ndarray
    valid: np.ndarray


@dataclass(frozen=True)
class ItemScore:
    """One scored image or frame. ``overlay``: BGR uint8 (H, W, 3) at the input's resolution,
    only when asked for; ``reconstruction``: uint8 (h, w, C) what the network expected."""

    score: float
    raw_score: float
    is_anomaly: bool
    anomaly_map: np.ndarray  # float32 (h, w), model resolution
    frame: np.ndarray  # uint8 (h, w, C): the preprocessed input
    overlay: np.ndarray | None = None
    reconstruction: np.ndarray | None = None


@dataclass
class StreamState:
    """What a stream carries from frame to frame: the network's state, the recent raw scores
    for the moving average, and the alignment reference."""

    network: Any = None
    recent: deque = field(default_factory=deque)
    reference: np.ndarray | None = None


class Detector:
    """A network with its preprocessing, post-processing and calibrated thresholds."""

    def __init__(
        self, network: torch.nn.Module, record: DetectorRecord, reference: np.ndarray | None = None,
        scorer: torch.nn.Module | None = None,
    ) -> None:
        self.network = network.eval()
        # what scores: the same maps with batch norms folded (passed on by ``calibrated``)
        self.scorer = scorer if scorer is not None else fold_batch_norms(self.network)
        self.record = record
        self.prep = record.prep
        self.postprocess: EvaluateConfig = record.postprocess
        self.family = get_family(record.family)
        self.reference = reference
        self.device = next(network.parameters()).device

    # --- construction and files ---------------------------------------------------------------

    @classmethod
    def from_trained(
        cls,
        model_dir: Path | str,
        postprocess: EvaluateConfig,
        *,
        reference: np.ndarray | None = None,
        dataset: str | None = None,
        device: str = "cpu",
    ) -> Detector:
        """An uncalibrated detector (no threshold yet) from the train stage's folder."""
        model_dir = Path(model_dir)
        spec = read_spec(model_dir)
        network, _ = load_network(spec, model_dir / TRAINED_WEIGHTS, device)
        record = DetectorRecord(spec=spec, postprocess=postprocess, dataset=dataset)
        return cls(network, record, _checked_reference(reference, record))

    def calibrated(self, **fields: Any) -> Detector:
        """The same detector with record fields replaced (threshold, pixel_threshold, ...)."""
        record = self.record.model_copy(update=fields)
        return Detector(self.network, DetectorRecord.model_validate(record.model_dump()),
                        self.reference, self.scorer)

    def with_model(self, **knobs: Any) -> Detector:
        """The same weights with family knobs replaced in the spec; only for knobs read when
        scoring (e.g. the family's ``map_knob``), which the weights do not depend on."""
        spec = {**self.record.spec, "model": {**self.record.spec["model"], **knobs}}
        network = build_model(spec).to(self.device)
        network.load_state_dict(self.network.state_dict())
        return Detector(network, self.record.model_copy(update={"spec": spec}), self.reference)

    def save(self, folder: Path | str) -> Path:
        """Write ``weights.safetensors`` then ``detector.json`` into ``folder`` (each atomic)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        extra = {}
        if self.reference is not None:
            extra[REFERENCE_TENSOR] = torch.from_numpy(np.ascontiguousarray(self.reference))
        save_weights(folder / WEIGHTS_FILE, self.network, extra)
        write_record(folder, self.record)
        return folder

    @classmethod
    def load(cls, folder: Path | str, device: str = "cpu") -> Detector:
        folder = Path(folder)
        record = read_record(folder)
        network, extra = load_network(record.spec, folder / WEIGHTS_FILE, device)
        reference = extra.get(REFERENCE_TENSOR)
        reference = None if reference is None else reference.cpu().numpy()
        return cls(network, record, _checked_reference(reference, record))

    # --- facts -------------------------------------------------------------------------------

    @property
    def is_video(self) -> bool:
        return self.record.modality == "video"

    @property
    def threshold(self) -> float:
        if self.record.threshold is None:
            raise DetectorError("this detector has no calibrated threshold yet (run evaluate)")
        return self.record.threshold

    @property
    def color_top(self) -> float | None:
        """The red end of the heat-map colour scale: twice the pixel threshold (a pixel at the
        threshold is mid-scale on every frame); None: each map's own maximum."""
        pixel = self.record.pixel_threshold
        return 2.0 * pixel if pixel and pixel > 0 else None

    # --- the chain on prepared frames ----------------------------------------------------------

    def _post(self, output: AnomalyOutput) -> tuple[np.ndarray, np.ndarray]:
        """The network's output (maps (B, 1, h, w)) -> (post-processed heat maps (B, h, w), raw
        scores (B,) of the post-processed anomaly maps); the heat map is the anomaly map unless
        the family gives a separate ``heat_map``."""
        masks = None
        if self.postprocess.use_error_head and output.predicted_error is not None:
            masks = output.predicted_error[:, 0].float().cpu().numpy()
        maps = post.smooth_map(output.error_map[:, 0].float().cpu().numpy(), self.postprocess, masks)
        raw = np.asarray(post.image_score(maps, self.postprocess), dtype=np.float64)
        if output.heat_map is not None:
            maps = post.smooth_map(output.heat_map[:, 0].float().cpu().numpy(), self.postprocess, masks)
        return maps, raw

    @torch.inference_mode()
    def score_prepared(self, frames: np.ndarray, batch_size: int = 32) -> PreparedScores:
        """Image families: prepared uint8 frames (N, h, w, C) -> PreparedScores."""
        frames = _check_frames(frames)
        n, height, width = frames.shape[:3]
        maps = np.zeros((n, height, width), dtype=np.float32)
        raw = np.zeros(n, dtype=np.float64)
        for start in range(0, n, batch_size):
            batch = np.asarray(frames[start : start + batch_size])
            output = self.scorer(to_tensor(batch, self.prep).to(self.device))
            stop = start + len(batch)
            maps[start:stop], raw[start:stop] = self._post(output)
        return PreparedScores(raw=raw, scores=raw.copy(), maps=maps, valid=np.ones(n, dtype=bool))

    def _smoothed(self, recent: deque, raw: float) -> float:
        """Trailing mean of the last ``smoothing_window`` finite raw scores (NaN before any)."""
        if math.isfinite(raw):
            recent.append(raw)
            while len(recent) > self.postprocess.window:
                recent.popleft()
        return float(np.mean(recent)) if recent else math.nan

    @torch.inference_mode()
    def _video_step(self, frames: np.ndarray, state: Any) -> tuple[Any, Any]:
        """Prepared frames (B, h, w, C), one per stream -> (output or None, network state)."""
        x = to_tensor(frames, self.prep).to(self.device)
        return self.scorer.stream(x, state)

    def score_clips(self, clips: Sequence[np.ndarray], clips_per_batch: int = 16) -> list[PreparedScores]:
        """Video: clips of prepared frames (T_i, h, w, C), each in time order -> PreparedScores
        per clip; up to ``clips_per_batch`` clips step side by side through ``stream``."""
        out: list[PreparedScores] = []
        for start in range(0, len(clips), clips_per_batch):
            out += self._clip_batch([_check_frames(c) for c in clips[start : start + clips_per_batch]])
        return out

    def _clip_batch(self, clips: list[np.ndarray]) -> list[PreparedScores]:
        lengths = [len(c) for c in clips]
        height, width = clips[0].shape[1:3]
        maps = [np.zeros((n, height, width), dtype=np.float32) for n in lengths]
        raws = [np.full(n, np.nan) for n in lengths]
        valid = [np.zeros(n, dtype=bool) for n in lengths]
        state = None
        for t in range(max(lengths, default=0)):
            # a clip that has ended repeats its last frame; its rows are never read again
            batch = np.stack([c[min(t, len(c) - 1)] for c in clips])
            output, state = self._video_step(batch, state)
            frame_maps = frame_raw = None
            if output is not None:
                frame_maps, frame_raw = self._post(output)
            for b, n in enumerate(lengths):
                if t >= n:
                    continue
                if frame_maps is not None:
                    maps[b][t], raws[b][t], valid[b][t] = frame_maps[b], frame_raw[b], True
        smooth = [post.trailing_mean(raw, self.postprocess.window) for raw in raws]
        return [PreparedScores(*parts) for parts in zip(raws, smooth, maps, valid, strict=True)]

    def stream(
        self, frame: np.ndarray, state: StreamState | None = None, *, reconstruction: bool = False
    ) -> tuple[ItemScore, StreamState]:
        """One prepared frame uint8 (h, w, C) of a stream -> (its ItemScore, the new state).

        Video: the step and the moving average of ``score_clips``; images: scored on its own.
        """
        state = state or StreamState()
        if not self.is_video:
            return self._items(frame[None], self.score_prepared(frame[None]), reconstruction)[0], state
        output, state.network = self._video_step(frame[None], state.network)
        height, width = frame.shape[:2]
        anomaly_map, raw, rec = np.zeros((height, width), np.float32), math.nan, None
        if output is not None:
            maps, raws = self._post(output)
            anomaly_map, raw = maps[0], float(raws[0])
            rec = _to_uint8(output.reconstruction[0]) if reconstruction else None
        score = self._smoothed(state.recent, raw)
        return self._item(frame, score, raw, anomaly_map, rec), state

    # --- decoded inputs -----------------------------------------------------------------------

    def prepare(self, image: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
        """A decoded image (gray (H, W) or BGR (H, W, 3)) -> prepared uint8 (h, w, C), aligned
        to ``reference`` (default: the shipped reference frame) when the prep aligns."""
        return preprocess_frame(image, self.prep, self.reference if reference is None else reference)

    def prepare_clip(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Decoded frames -> prepared uint8 (T, h, w, C); without a shipped reference an
        aligning prep aligns to the clip's first frame."""
        first = self.prepare(images[0])
        reference = self.reference
        if reference is None and self.prep.align != "none":
            reference = first
        return np.stack([first, *(self.prepare(image, reference) for image in images[1:])])

    def score(self, images: Sequence[np.ndarray], *, overlay: bool = False) -> list[ItemScore]:
        """Decoded images -> one ItemScore each: independent images for image families, one
        clip in time order for video families (its first frames may have no score: NaN)."""
        if len(images) == 0:
            raise ValueError("empty batch: send at least one image")
        if self.is_video:
            frames = self.prepare_clip(images)
            scored = self.score_clips([frames])[0]
        else:
            frames = np.stack([self.prepare(image) for image in images])
            scored = self.score_prepared(frames)
        items = self._items(frames, scored, reconstruction=False)
        if overlay:
            items = [self.with_overlay(item, image) for item, image in zip(items, images, strict=True)]
        return items

    def with_overlay(self, item: ItemScore, image: np.ndarray | None = None) -> ItemScore:
        """``item`` with its overlay drawn on ``image`` (the decoded input, at its own
        resolution; default: the prepared frame)."""
        from dataclasses import replace

        return replace(item, overlay=self.overlay(item.anomaly_map, image, item.frame))

    def overlay(
        self, anomaly_map: np.ndarray, image: np.ndarray | None = None, frame: np.ndarray | None = None
    ) -> np.ndarray:
        """BGR uint8 overlay of ``anomaly_map`` (h, w) on the decoded input ``image`` (H, W[, 3]
        BGR or gray) at its resolution (the map is placed in ``prep.roi`` when one is set), or on
        the prepared ``frame`` (RGB/gray) when no input is given."""
        top = self.color_top or float(np.max(anomaly_map)) or 1.0
        if image is None:
            return post.overlay(frame, anomaly_map, top)
        base = post.bgr_input(image)
        heat = post.map_to_input(anomaly_map, base.shape[:2], self.prep.roi)
        return post.overlay_bgr(base, heat, top)

    def _item(self, frame, score, raw, anomaly_map, rec=None) -> ItemScore:
        flagged = bool(math.isfinite(score) and score >= self.threshold)
        return ItemScore(float(score), float(raw), flagged, anomaly_map, frame, None, rec)

    def _items(self, frames: np.ndarray, scored: PreparedScores, reconstruction: bool) -> list[ItemScore]:
        recs = self._reconstructions(frames) if reconstruction and not self.is_video else None
        return [
            self._item(frames[i], scored.scores[i], scored.raw[i], scored.maps[i],
                       None if recs is None else recs[i])
            for i in range(len(frames))
        ]

    @torch.inference_mode()
    def _reconstructions(self, frames: np.ndarray) -> list[np.ndarray]:
        output = self.scorer(to_tensor(frames, self.prep).to(self.device))
        return [_to_uint8(r) for r in output.reconstruction]


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames (N, H, W, C), got {frames.dtype} {frames.shape}")
    return frames


def _checked_reference(reference: np.ndarray | None, record: DetectorRecord) -> np.ndarray | None:
    """The alignment reference (uint8 (h, w, C)), required exactly when the prep aligns."""
    prep = record.prep
    if prep.align == "none":
        return None
    if reference is None:
        raise DetectorError(
            f"prep.align is {prep.align!r} but the detector has no alignment reference frame"
        )
    expected = (*prep.size, prep.channels)
    if reference.dtype != np.uint8 or reference.shape != expected:
        raise DetectorError(
            f"alignment reference of {reference.dtype} {reference.shape}, expected uint8 {expected}"
        )
    return np.ascontiguousarray(reference)


def _to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """float (C, h, w) in [0, 1] -> uint8 (h, w, C)."""
    array = tensor.float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return (array * 255.0 + 0.5).astype(np.uint8)
