"""vigil.serving: pull the registry's champion, score images, clips and live streams.

Modules: ``pull`` (alias -> verified local package + manifest), ``loader`` (package -> scorer),
``follow`` (poll the alias, swap the scorer atomically), ``app`` (FastAPI service), ``watch``
(stream scoring with alerts), ``cli`` (``vigil pull|serve|watch``).

This module holds the serving settings read from ``configs/serving.yaml``: strict (unknown keys
are errors), so a typo in the file fails at start-up instead of silently using a default.
"""

from __future__ import annotations

from pathlib import Path

from typing import TYPE_CHECKING

from pydantic import Field

from vigil.config import ConfigError, Strict, read_yaml_mapping, validate_config

if TYPE_CHECKING:
    from vigil.detector import Detector

DEFAULT_CONFIG = "configs/serving.yaml"


class ServerSettings(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    torch_threads: int = Field(1, ge=1)  # intra-op threads per inference call
    max_concurrent_inference: int = Field(2, ge=1)  # forward passes running at once
    # scoring requests admitted at once (reading, queued, scoring); more get 503 + Retry-After
    max_in_flight: int = Field(8, ge=1)
    retry_after_s: int = Field(1, ge=0)  # the Retry-After of a 503
    read_timeout_s: float = Field(30.0, gt=0)  # request head and body must arrive within this
    keep_alive_s: int = Field(5, ge=1)  # idle keep-alive connections are closed after this


class FollowSettings(Strict):
    """Polling the registry alias; a new version is loaded in the background and swapped in."""

    enabled: bool = True
    alias: str = "champion"
    poll_interval_s: float = Field(30.0, gt=0)


class LimitSettings(Strict):
    max_request_bytes: int = Field(20 * 1024 * 1024, ge=1)  # 413 above this
    max_image_side: int = Field(4096, ge=1)  # 413 when width or height is larger
    # decoded pixels (width x height, read from the header before decoding): 413 above these
    max_image_pixels: int = Field(16_777_216, ge=1)  # per image (4096 x 4096)
    max_request_pixels: int = Field(67_108_864, ge=1)  # per request: sum over a batch or clip
    max_batch: int = Field(64, ge=1)  # images per /score/batch request
    max_clip_frames: int = Field(600, ge=2)  # frames per /score/clip request


class WatchSettings(Strict):
    """``vigil watch``: alerting on a stream (the score and its smoothing are the model's own,
    as evaluated: ``Detector.stream``)."""

    # smoothed score at or above the threshold this many frames in a row: alert; None: the
    # model's own ``evaluate.alert_frames``, the rule its event metrics were measured with
    alert_frames: int | None = Field(None, ge=1)
    webhook_timeout_s: float = Field(2.0, gt=0)
    timeline_frames: int = Field(240, ge=8)  # frames shown in the output video's score strip
    read_queue: int = Field(8, ge=1)  # decoded frames buffered ahead of inference

    def alert_run(self, detector: Detector) -> int:
        """Frames in a row that raise an alert for ``detector``: this setting, else the model's."""
        return self.alert_frames or detector.postprocess.alert_run


class ConsoleSettings(Strict):
    """The operator console at ``/console`` (``vigil.serving.console``)."""

    enabled: bool = True
    root: str = "."  # project root: where configs/retrain.yaml and reports/retrain/ are
    retrain_config: str = "configs/retrain.yaml"  # relative to root
    history_cycles: int = Field(10, ge=1)  # retrain cycles listed
    live_points: int = Field(300, ge=1)  # score-log points sent when the live panel connects


class ServingConfig(Strict):
    # JSONL score log for the drift trigger (vigil.serving.scorelog); None: off
    score_log: str | None = None
    # several models on one box: "NAME" or "NAME@ALIAS" each, served on /models/NAME/...
    # (vigil.serving.multi); `vigil serve --model` replaces this list
    models: list[str] = []
    server: ServerSettings = ServerSettings()
    follow: FollowSettings = FollowSettings()
    limits: LimitSettings = LimitSettings()
    watch: WatchSettings = WatchSettings()
    console: ConsoleSettings = ConsoleSettings()


def load_serving_config(path: Path | str | None = DEFAULT_CONFIG) -> ServingConfig:
    """Read and validate ``configs/serving.yaml``; ``None`` or a missing default -> defaults.

    Raises ConfigError naming the file and every bad key.
    """
    if path is None:
        return ServingConfig()
    path = Path(path)
    if not path.is_file():
        if str(path) == DEFAULT_CONFIG:
            return ServingConfig()
        raise ConfigError(f"{path}: serving config not found")
    raw = read_yaml_mapping(path, "serving config")
    return validate_config(ServingConfig, raw, path, "serving settings")
