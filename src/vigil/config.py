"""Typed, strict settings: one model per params.yaml section (unknown keys are errors).

Every experiment knob lives in params.yaml, grouped by the DVC stage that reads it. URIs and
secrets never live there: they come from the environment (see ``vigil.locations``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from vigil.config_base import (  # noqa: F401  (the params schema's public building blocks)
    ConfigError,
    FrameSize,
    Roi,
    Strict,
    read_yaml_mapping,
    validate_config,
)


# --- data -----------------------------------------------------------------------------------


class DatasetSpec(Strict):
    """One dataset the pipeline runs on.

    ``source`` is a folder (MVTec layout for images; video files or ``frames/<clip>/`` folders for
    video). The built-in datasets are generated into ``data/raw/<name>`` by the ``generate``
    stage, so pointing ``source`` at your own folder is the only change needed to use your data.
    """

    source: str
    modality: Literal["image", "video"]
    labels_csv: str | None = None  # video only: CSV with video,frame_file,label columns
    # Per-dataset settings: any of these sections, deep-merged over the global one (strict: the
    # merged section is validated like the global one, so an unknown key is an error naming it).
    prepare: dict[str, Any] = {}
    model: dict[str, Any] = {}
    train: dict[str, Any] = {}
    sweep: dict[str, Any] = {}
    evaluate: dict[str, Any] = {}


class DataConfig(Strict):
    datasets: dict[str, DatasetSpec]
    extra_dir: str = "data/extra"  # normal data added by `vigil ingest`: <extra_dir>/<dataset>/

    @field_validator("datasets")
    @classmethod
    def _names_are_safe(cls, value: dict[str, DatasetSpec]) -> dict[str, DatasetSpec]:
        if not value:
            raise ValueError("at least one dataset is required")
        for name in value:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"dataset name {name!r} must be letters, digits, '-' or '_'")
        return value


# --- generate (built-in synthetic datasets) --------------------------------------------------


class CapsulesGen(Strict):
    image_size: int = Field(128, ge=32)
    n_train: int = Field(240, ge=1)
    n_test_good: int = Field(60, ge=1)
    n_test_per_defect: int = Field(15, ge=1)


class PrintGen(Strict):
    frame_size: int = Field(96, ge=32)
    fps: int = Field(30, ge=1)
    n_train_videos: int = Field(6, ge=1)
    n_test_videos: int = Field(4, ge=1)
    frames_per_video: int = Field(120, ge=8)
    anomalies_per_test_video: int = Field(2, ge=1)


class GenerateConfig(Strict):
    seed: int = 0
    capsules: CapsulesGen = CapsulesGen()
    print: PrintGen = PrintGen()


# --- prepare ---------------------------------------------------------------------------------


class ImagePrep(Strict):
    """Preprocessing shared by the prepare stage and serving (one code path)."""

    size: FrameSize = (128, 128)  # (height, width) after resize
    channels: Literal[1, 3] = 3  # 1 = gray, 3 = RGB (converted from OpenCV's BGR)
    equalize: Literal["none", "hist", "clahe"] = "none"
    clahe_clip: float = Field(2.0, gt=0)
    roi: Roi = None  # x, y, w, h in source pixels, before resize
    align: Literal["none", "ecc", "phase"] = "none"  # register each frame to a reference
    normalize: Literal["unit", "zscore"] = "unit"  # unit: [0, 1]; zscore: per-image standardize


class VideoPrep(ImagePrep):
    size: FrameSize = (64, 64)
    channels: Literal[1, 3] = 1
    fps: float | None = 15  # resample to this rate; None keeps the source rate
    clip_len: int = Field(8, ge=2)  # frames per training clip


class SplitConfig(Strict):
    val_fraction: float = Field(0.15, gt=0, lt=1)  # of the normal training items
    tune_fraction: float = Field(0.5, gt=0, lt=1)  # of the labelled test items; the rest is test
    seed: int = 0


class PrepareConfig(Strict):
    image: ImagePrep = ImagePrep()
    video: VideoPrep = VideoPrep()
    split: SplitConfig = SplitConfig()
    max_bad_fraction: float = Field(0.05, ge=0, le=1)  # more unreadable files than this: error
    max_image_pixels: StrictInt = Field(64_000_000, ge=1)  # decoded pixels per image (bombs)


# --- model -----------------------------------------------------------------------------------


class ModelConfig(BaseModel):
    """Which model family each modality uses, and each family's knobs under ``model.<family>``.

    Families live in ``vigil.models.<family>/`` (see ``vigil.models.registry``); a family's
    section is validated by that family's own strict config class. Families not named here keep
    their config defaults.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    image_family: str = "draem"
    video_family: str = "future_frame"

    @model_validator(mode="after")
    def _families_are_known(self) -> ModelConfig:
        from vigil.models.registry import get_family

        for modality in ("image", "video"):
            name = self.family_name(modality)
            family = get_family(name)
            if family.modality != modality:
                raise ValueError(
                    f"model.{modality}_family: {name!r} is a {family.modality} family"
                )
        for name, section in (self.model_extra or {}).items():
            if not isinstance(section, dict):
                raise ValueError(f"model.{name}: expected a mapping of the family's knobs")
            family = get_family(name, key=f"model.{name}")
            try:
                family.config.model_validate(section)
            except ValidationError as error:
                raise ValueError(_nested_errors(f"model.{name}", error)) from None
        return self

    def family_name(self, modality: str) -> str:
        return self.image_family if modality == "image" else self.video_family

    def family_config(self, family: str) -> BaseModel:
        """The typed knobs of ``family`` (its section, over the family's defaults)."""
        from vigil.models.registry import get_family

        section = (self.model_extra or {}).get(family, {})
        return get_family(family).config.model_validate(section)


def _nested_errors(prefix: str, error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        key = ".".join([prefix, *(str(p) for p in item["loc"])])
        if item["type"] == "extra_forbidden":
            parts.append(f"{key}: unknown key (typo?)")
        elif not item["loc"] and item["type"] == "value_error":
            # a section's own check (e.g. ModelConfig's family sections) already names its keys
            # from the section down ("model.conv_ae.dept: ..."): prefix them, no input dump
            message = item["msg"].removeprefix("Value error, ")
            section = prefix.rsplit(".", 1)[-1]
            if message.startswith(f"{section}."):
                parts.append(prefix + message[len(section):])
            else:
                parts.append(f"{prefix}: {message}")
        else:
            parts.append(f"{key}: {item['msg']} (got {item.get('input')!r})")
    return "; ".join(parts)


# --- train -----------------------------------------------------------------------------------


class TrainConfig(Strict):
    max_epochs: int = Field(100, ge=1)
    patience: int = Field(20, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(0.002, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    loss: Literal["mse", "ssim", "mse+ssim"] = "mse"
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    log_images_every_n_epochs: int = Field(5, ge=1)
    accelerator: str = "auto"
    max_minutes: float | None = Field(20, gt=0)  # wall-clock budget of one training (None: none)


# --- sweep -----------------------------------------------------------------------------------


class SweepConfig(Strict):
    n_trials: StrictInt = Field(8, ge=0)  # 0 skips the sweep: the configured model is used as is
    sampler: Literal["tpe", "grid", "random"] = "tpe"
    epochs_per_trial: int = Field(3, ge=1)
    seed: int = 0
    storage: str | None = None  # Optuna storage URL; None: VIGIL_OPTUNA_STORAGE or SQLite
    max_normal_error: float = Field(0.05, gt=0)  # cap on mean normal error (degenerate optimum)
    pruning: bool = True
    space: str = "configs/search_space.yaml"


# --- evaluate, gate, register ----------------------------------------------------------------


SMOOTHING_WINDOWS = (1, 2, 4, 8)  # frames; the candidates of ``smoothing_window: auto``
SMOOTHING_FALLBACK = 2
ALERT_FRAMES = (1, 2, 3, 5)  # frames; the candidates of ``alert_frames: auto``
ALERT_FALLBACK = 3  # 0.2 s at 15 fps
# the candidates of ``score: auto``; the first is what ``auto`` reads as until evaluate chose
SCORES = ("topk_mean", "mean")


class EvaluateConfig(Strict):
    """Post-processing of error maps and scoring; defaults equal params.yaml (one truth), whose
    comments give the reason for each value that departs from the seeds."""

    # how a map becomes one score; auto: the one of SCORES with the best AUROC on the labelled
    # tune split (chosen with the family's map, ``vigil.evaluation.map_choice``), SCORES[0]
    # without labelled tune anomalies
    score: Literal["auto", "mean", "max", "topk_mean"] = "auto"
    topk_fraction: float = Field(0.005, gt=0, le=1)
    median_blur: int = Field(3, ge=1)  # odd kernel size; the seeds use 7
    use_error_head: bool = False
    pixel_threshold_quantile: float = Field(0.99, gt=0, lt=1)  # of normal val pixel errors
    min_area: int = Field(10, ge=0)  # connected components smaller than this are dropped
    roi: Roi = None  # x, y, w, h in error-map (model input) pixels, i.e. after prepare's resize
    # video: trailing moving average over frame scores; auto: the window of SMOOTHING_WINDOWS
    # with the highest frame AUROC on the labelled tune split (evaluate chooses it, ties: the
    # shorter), SMOOTHING_FALLBACK without labelled tune anomalies
    smoothing_window: int | Literal["auto"] = "auto"
    # video: an alert (an event in the metrics, an alert of `vigil watch`) is this many frames
    # in a row at or above the threshold; auto: the one of ALERT_FRAMES with the best event F1
    # on the labelled tune split at the calibrated threshold (ties: the shorter), ALERT_FALLBACK
    # without labelled tune anomalies
    alert_frames: int | Literal["auto"] = "auto"
    # how the operating threshold is calibrated on tune: auto follows the gate (prevalence if
    # gate.prevalence is set, else false_alarm_rate if gate.max_false_alarm_rate is, else precision)
    threshold_method: Literal["auto", "precision", "false_alarm_rate", "prevalence"] = "auto"
    n_report_examples: int = Field(6, ge=0)

    @field_validator("smoothing_window", "alert_frames")
    @classmethod
    def _frames_or_auto(cls, value: int | str, info: ValidationInfo) -> int | str:
        if value != "auto" and value < 1:
            raise ValueError(f"{info.field_name} must be >= 1 frame or 'auto', got {value}")
        return value

    @property
    def window(self) -> int:
        """The smoothing window in frames (``auto`` before evaluate chose: the fallback)."""
        return SMOOTHING_FALLBACK if self.smoothing_window == "auto" else self.smoothing_window

    @property
    def summary(self) -> str:
        """How a map becomes a score (``auto`` before evaluate chose: ``SCORES[0]``)."""
        return SCORES[0] if self.score == "auto" else self.score

    @property
    def alert_run(self) -> int:
        """Frames in a row above the threshold that make an alert (``auto`` before evaluate
        chose: the fallback)."""
        return ALERT_FALLBACK if self.alert_frames == "auto" else self.alert_frames

    @field_validator("median_blur")
    @classmethod
    def _odd_kernel(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"median blur kernel must be odd, got {value}")
        return value


class GateConfig(Strict):
    """The promotion gate's bars (``vigil.registry.gate``); defaults equal params.yaml."""

    precision: float = Field(0.9, gt=0, le=1)
    min_recall: float = Field(0.8, ge=0, le=1)
    champion_tolerance: float = Field(0.02, ge=0, le=1)
    # share of normal test items flagged at the threshold; None: not a criterion
    max_false_alarm_rate: float | None = Field(0.05, ge=0, le=1)
    # production defect rate: when set, precision is judged at it (from recall and false-alarm
    # rate) instead of on the anomaly-heavy test split; None: the test split's own precision
    prevalence: float | None = Field(None, gt=0, lt=1)
    # promote on synthetic anomalies (pasted into val) when the test split has no labelled ones
    allow_synthetic_evidence: bool = False


class RegisterConfig(Strict):
    model_name_prefix: str = "vigil"
    # who may move `champion`: auto = a clean commit or `vigil retrain` (not a DVC experiment,
    # not an uncommitted tree); always; never (every candidate only becomes `challenger`)
    promote: Literal["auto", "always", "never"] = "auto"


# `register` is a params.yaml section (the register stage); pydantic warns that the name shadows
# ABCMeta.register, which no code here uses on Params.
warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)


class Params(Strict):
    data: DataConfig
    generate: GenerateConfig = GenerateConfig()
    prepare: PrepareConfig = PrepareConfig()
    # a factory: validating ModelConfig imports the family packages, which import this module
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = TrainConfig()
    sweep: SweepConfig = SweepConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    gate: GateConfig = GateConfig()
    register: RegisterConfig = RegisterConfig()

    @model_validator(mode="after")
    def _overrides_are_valid(self) -> Params:
        """Every dataset's merged settings validate (errors name ``data.datasets.<d>.<key>``),
        and ``evaluate.roi`` (error-map pixels) fits that dataset's prepared frame size."""
        for name, spec in self.data.datasets.items():
            merged = self.for_dataset(name)
            roi = merged.evaluate.roi
            if roi is None:
                continue
            x, y, w, h = roi
            height, width = getattr(merged.prepare, spec.modality).size
            if x + w > width or y + h > height:
                raise ValueError(
                    f"evaluate.roi {list(roi)} (x, y, w, h) does not fit inside the {width}x"
                    f"{height} error maps of dataset {name!r} (prepare.{spec.modality}.size)"
                )
        return self

    def dataset(self, name: str) -> DatasetSpec:
        try:
            return self.data.datasets[name]
        except KeyError:
            known = ", ".join(sorted(self.data.datasets))
            raise ConfigError(f"unknown dataset {name!r} (data.datasets has: {known})") from None

    def for_dataset(self, name: str) -> Params:
        """These params with ``data.datasets.<name>``'s overrides deep-merged into ``prepare``,
        ``model``, ``train``, ``sweep`` and ``evaluate``: what every stage of that dataset uses."""
        spec = self.dataset(name)
        changed = {}
        for section in OVERRIDABLE_SECTIONS:
            override = getattr(spec, section)
            if not override:
                continue
            base = getattr(self, section).model_dump(mode="json")
            cls = type(getattr(self, section))
            try:
                changed[section] = cls.model_validate(deep_merge(base, override))
            except ValidationError as error:
                raise ValueError(
                    _nested_errors(f"data.datasets.{name}.{section}", error)
                ) from None
        return self.model_copy(update=changed) if changed else self

    def modality_prep(self, name: str) -> ImagePrep:
        """The dataset's prepare settings for its modality (``prepare.image`` or ``.video``)."""
        merged = self.for_dataset(name)
        return getattr(merged.prepare, self.dataset(name).modality)


#: Sections a dataset may override in ``data.datasets.<name>``.
OVERRIDABLE_SECTIONS = ("prepare", "model", "train", "sweep", "evaluate")


def deep_merge(base: dict, override: dict) -> dict:
    """``base`` with ``override`` merged in: nested mappings merge, anything else replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_params(raw: dict, path: Path | str = "params.yaml") -> Params:
    """Validate a params mapping; raises ConfigError naming the file and every bad key."""
    return validate_config(Params, raw, path, "parameters")


def load_params(path: Path | str = "params.yaml") -> Params:
    return parse_params(read_yaml_mapping(path, "params file"), path)
