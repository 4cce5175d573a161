"""Knobs of the DRAEM-style family (``model.draem`` in params.yaml)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vigil.config import Strict
from vigil.models.error_maps import ErrorMapKind

# the anomaly maps a trained network can output; the first is what ``auto`` reads as until the
# evaluate stage chooses one on the labelled tune split
ANOMALY_MAPS = ("fused", "segmentation", "reconstruction")
# from this shorter image side up, seg_stride auto runs the U-Net at half resolution: its cost
# grows with the pixel count (4x from 128 to 256 px), and within a wall-clock training budget
# the half-resolution net scored better (README, "Half-resolution segmentation net")
HALF_RES_SEG_SIDE = 256
AnomalyMap = Literal["auto", "fused", "segmentation", "reconstruction"]
HeatMap = Literal["auto", "same", "fused", "segmentation", "reconstruction"]


class DraemConfig(Strict):
    """Reconstructive autoencoder (encoding = latent_channels x H/2**depth x W/2**depth, the
    sweep's knobs) + a small discriminative U-Net that segments the anomaly from [input,
    reconstruction], trained on normal images with synthetic anomalies pasted in."""

    # reconstructive autoencoder: the encoding size (searchable)
    depth: int = Field(4, ge=1, le=6)
    filters: int = Field(16, ge=1)  # first block; doubled per block, capped at 256
    latent_channels: int = Field(32, ge=1)
    # discriminative (segmentation) network
    seg_filters: int = Field(8, ge=1)  # first level; doubled per level, capped at 128
    seg_depth: int = Field(4, ge=1, le=5)
    # 2: the U-Net runs at half resolution (a stride-2 stem); auto: 2 for images whose shorter
    # side is >= HALF_RES_SEG_SIDE, else 1 (resolved by ``at_size`` when the model spec is made)
    seg_stride: Literal["auto", 1, 2] = "auto"
    # 2: the reconstruction error map (error_map) is computed on 2x2-averaged images and
    # upsampled, a quarter of the work (SSIM was a third of a fused map's inference at 256x256
    # on 2 cores); auto: as seg_stride's auto. The training losses stay at full resolution.
    error_stride: Literal["auto", 1, 2] = "auto"
    # how the U-Net's decoder meets each skip: add (a 1x1 lateral, summed; 3x fewer decoder
    # FLOPs and as good on the tiles at equal epochs and better at equal time: README) or concat
    seg_decoder: Literal["concat", "add"] = "add"
    # anomaly map: segmentation (the predicted mask), reconstruction (the restoration-trained
    # autoencoder's error_map), fused (both, each divided by its mean on normal val images) or
    # auto: the one with the best image AUROC on the labelled tune split, chosen at evaluate
    # (which wins is a property of the data: the mask on the magnetic tiles, the reconstruction
    # on a photograph probe; README)
    anomaly_map: AnomalyMap = "auto"
    # heat map (overlays, pixel metrics): same (the anomaly map), one of ANOMALY_MAPS, or auto:
    # the best pixel AUROC on the tune split's masks, chosen at evaluate (image AUROC and pixel
    # AUROC can favour different maps: on the tiles fused scores images best, the mask localizes
    # best; README)
    heat_map: HeatMap = "auto"
    error_map: ErrorMapKind = "ssim"  # the reconstruction term: l2 | ssim | gradient
    # mean filter over the predicted mask, as a fraction of the shorter image side
    smooth_fraction: float = Field(0.04, ge=0, le=0.5)
    # synthetic anomalies (training only)
    anomaly_probability: float = Field(0.5, ge=0, le=1)  # share of corrupted training samples
    min_coverage: float = Field(0.005, gt=0, le=1)  # mask area share, drawn uniformly in between
    max_coverage: float = Field(0.25, gt=0, le=1)
    max_opacity: float = Field(0.8, ge=0, lt=1)  # weight of the original inside the mask: U(0, this)
    # share of the anomalies shaped as thin scars (scratches, cracks) instead of Perlin blobs
    scar_share: float = Field(0.3, ge=0, le=1)
    crop: int | None = Field(None, ge=8)  # train on random crops of this side (None: whole image)
    # losses
    ssim_weight: float = Field(1.0, ge=0)
    focal_gamma: float = Field(2.0, ge=0)
    seg_weight: float = Field(1.0, ge=0)

    def at_size(self, height: int, width: int) -> DraemConfig:
        """This config for images of ``height`` x ``width``: the ``auto`` strides resolved."""
        stride = 2 if min(height, width) >= HALF_RES_SEG_SIDE else 1
        update = {knob: stride for knob in ("seg_stride", "error_stride")
                  if getattr(self, knob) == "auto"}
        return self.model_copy(update=update) if update else self

    @model_validator(mode="after")
    def _coverage_range(self) -> DraemConfig:
        if self.min_coverage > self.max_coverage:
            raise ValueError(
                f"min_coverage ({self.min_coverage}) is above max_coverage ({self.max_coverage})"
            )
        return self
