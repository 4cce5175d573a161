"""Issue 15 in `prepare` and the params: image bombs are bad files, frame sizes and trial counts
are range-checked with the key named, symlink loops in a source folder are named."""

from __future__ import annotations

import copy
import logging
import os

import pytest
import yaml

from tests.conftest import REPO_ROOT, bomb_png
from tests.unit.data.test_data_prepare import IMAGE_SPEC, _mvtec
from vigil.config import ConfigError, PrepareConfig, parse_params
from vigil.data.ingest import scan_images
from vigil.data.prepare import PrepareError, prepare_dataset
from vigil.data.prepared import PreparedDataset


def test_a_20000_squared_png_is_a_bad_file_skipped_unread_within_max_bad_fraction(tmp_path):
    root = _mvtec(tmp_path / "ds", n_train=20)
    (root / "train" / "good" / "bomb.png").write_bytes(bomb_png(20000, 20000))  # 400 Mpx
    cfg = PrepareConfig.model_validate({"image": {"size": [16, 16]}, "max_bad_fraction": 0.1})
    result = prepare_dataset(
        "p", IMAGE_SPEC, cfg, tmp_path / "out", base_dir=tmp_path, progress=False
    )
    assert result.n_bad == 1
    reasons = {e["origin"]: e["reason"] for e in PreparedDataset.load(tmp_path / "out").manifest[
        "bad_files"
    ]}
    assert "image of 20000x20000" in reasons["train/good/bomb.png"]
    assert "exceeds the budget of 64,000,000 decoded pixels" in reasons["train/good/bomb.png"]


def test_the_pixel_budget_is_prepare_max_image_pixels_and_beyond_the_bad_fraction_fails(tmp_path):
    _mvtec(tmp_path / "ds")  # 24x32 = 768 px images
    cfg = PrepareConfig.model_validate(
        {"image": {"size": [16, 16]}, "max_bad_fraction": 0.05, "max_image_pixels": 700}
    )
    with pytest.raises(PrepareError, match="exceed prepare.max_bad_fraction") as info:
        prepare_dataset("p", IMAGE_SPEC, cfg, tmp_path / "out", base_dir=tmp_path, progress=False)
    assert "train/good/000.png: image of 32x24 = 768 pixels exceeds the budget of 700" in str(
        info.value
    )


def _params_with(path: tuple[str, ...], value) -> dict:
    raw = copy.deepcopy(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()))
    section = raw
    for key in path[:-1]:
        section = section[key]
    section[path[-1]] = value
    return raw


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("prepare", "image", "size"), [-64, 64], "prepare.image.size: "),
        (("prepare", "video", "size"), [0, 0], "prepare.video.size: "),
        (("prepare", "image", "size"), [64, 100000], "prepare.image.size: "),
        (("sweep", "n_trials"), True, "sweep.n_trials: "),
        (("prepare", "max_image_pixels"), 0, "prepare.max_image_pixels: "),
    ],
)
def test_out_of_range_params_are_config_errors_naming_the_key(path, value, message):
    with pytest.raises(ConfigError) as info:
        parse_params(_params_with(path, value))
    line = next(x for x in str(info.value).splitlines() if message in x)
    if path[-1] == "size":
        assert "each side must be between 4 and 8192 pixels" in line
    if path[-1] == "n_trials":
        assert "valid integer" in line and "True" in line


def test_symlink_loops_in_a_source_folder_are_named_in_a_warning(tmp_path, caplog):
    root = _mvtec(tmp_path / "ds")
    good = root / "train" / "good"
    os.symlink("loop-b.png", good / "loop-a.png")
    os.symlink("loop-a.png", good / "loop-b.png")
    os.symlink("self", root / "test" / "self")  # a looping folder link
    with caplog.at_level(logging.WARNING):
        source = scan_images(root)
    assert len([r for r in source.records if r.part == "train"]) == 10
    assert f"{good / 'loop-a.png'}: symbolic link loop" in caplog.text
    assert f"{good / 'loop-b.png'}: symbolic link loop" in caplog.text
    assert f"{root / 'test' / 'self'}: symbolic link loop" in caplog.text


def test_non_utf8_source_names_never_put_lone_surrogates_in_the_manifest(tmp_path):
    root = _mvtec(tmp_path / "ds", n_train=10)
    good = root / "train" / "good"
    odd = good / os.fsdecode(b"part-\xff.png")
    (good / "000.png").rename(odd)
    cfg = PrepareConfig.model_validate({"image": {"size": [16, 16]}})
    prepare_dataset("p", IMAGE_SPEC, cfg, tmp_path / "out", base_dir=tmp_path, progress=False)
    text = next((tmp_path / "out").glob("manifest*.json")).read_text(encoding="utf-8")
    assert "\\udc" not in text  # JSON escapes of lone surrogates
    assert "train/good/part-\\\\xff.png" in text
