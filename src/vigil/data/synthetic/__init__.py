"""Built-in synthetic datasets, generated deterministically with numpy and OpenCV.

Both are written in the layouts real users bring, so one ingestion path reads them. Sizes and
counts come from ``generate`` in params.yaml; the same ``generate.seed`` gives the same files,
and item i of a folder depends only on (seed, folder, i), not on the other counts.

``capsules`` (images, MVTec AD layout, PNG, BGR):
    ``train/good/NNN.png``, ``test/good/NNN.png``, ``test/<defect>/NNN.png`` and
    ``ground_truth/<defect>/NNN_mask.png`` (uint8, 255 = anomalous pixel). One two-tone capsule
    (red/ivory, blue/ivory or red/yellow) per image, at a random position and orientation, shaded
    with a glare stripe and a soft shadow, on a conveyor belt with slats, grain and mottling under
    mildly varying light. Defects: ``foreign_object`` (a ring, a screw or debris on the belt or
    the capsule), ``crack`` (a dark jagged crack across the capsule), ``miscolor`` (one half in a
    color outside the palette: green, purple or teal).

``print`` (video, MJPG ``.avi``): a laser melt pool of metal 3D printing.
    ``training/train_NNN.avi`` (normal only), ``testing/test_NNN.avi``,
    ``testing/frame_labels.csv`` (``video,frame_file,frame_index_1based,label,defect``;
    ``frame_file`` is empty for video files) and ``testing/masks/<clip>/<frame:04d>.png`` for each
    anomalous frame. A bright flickering melt pool with a glow halo and a cooling trail follows a
    serpentine raster path over a dark powder bed that slowly changes layer and brightness, with
    sensor noise. Test clips hold ``anomalies_per_test_video`` events of consecutive frames:
    ``spark_shower`` (many bright streaks), ``spatter`` (bright droplets flying off), ``blob`` (a
    sudden large bright blob) and ``stall`` (the pool stops moving and overheats).
"""

from __future__ import annotations

from pathlib import Path

from vigil.config import GenerateConfig
from vigil.data.synthetic._common import build_atomically
from vigil.data.synthetic.capsules import DEFECTS as CAPSULE_DEFECTS
from vigil.data.synthetic.capsules import generate_capsules, render_capsule_image
from vigil.data.synthetic.melt_pool import ANOMALIES as PRINT_ANOMALIES
from vigil.data.synthetic.melt_pool import generate_print, render_clip

__all__ = [
    "CAPSULE_DEFECTS",
    "PRINT_ANOMALIES",
    "generate_all",
    "generate_capsules",
    "generate_print",
    "render_capsule_image",
    "render_clip",
]


def generate_all(out_dir: Path | str, cfg: GenerateConfig) -> dict[str, dict[str, int]]:
    """Write ``<out_dir>/capsules`` and ``<out_dir>/print``, each atomically (temp, rename).

    Returns the counts each generator reports, keyed by dataset name.
    """
    out_dir = Path(out_dir)
    return {
        "capsules": build_atomically(
            out_dir / "capsules", lambda tmp: generate_capsules(tmp, cfg.capsules, cfg.seed)
        ),
        "print": build_atomically(
            out_dir / "print", lambda tmp: generate_print(tmp, cfg.print, cfg.seed)
        ),
    }
