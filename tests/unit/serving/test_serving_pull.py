"""`pull`: alias -> verified, atomically installed package with a manifest (real registry)."""

from __future__ import annotations

import json
import os
import shutil

import mlflow
import pytest
from conftest import make_model_dir, png, register, sample_images

from vigil.registry.integrity import CHECKSUM_TAG
from vigil.serving.pull import ChecksumMismatchError, PullError, pull
from vigil.serving.install import CURRENT_LINK, MANIFEST_FILE, PACKAGE_DIR, VERSIONS_DIR, read_manifest, replace_dir, resolve_model_dir


def _stored_files(root, name):
    """Files of the registered packages in the test's artifact store."""
    return list((root / "artifacts").rglob(name))


def test_pull_installs_package_and_manifest(image_registry, tmp_path):
    name, _ = image_registry
    manifest = pull(name, "champion", tmp_path / "deploy" / "model")
    dest = tmp_path / "deploy" / "model"
    assert (dest / PACKAGE_DIR / "MLmodel").is_file()
    assert json.loads((dest / MANIFEST_FILE).read_text()) == manifest
    assert manifest["name"] == name and manifest["version"] == "1"
    assert manifest["alias"] == "champion"
    assert manifest["threshold"] == pytest.approx(0.05)
    assert manifest["metrics"]["test_image_auroc"] == 0.5
    assert manifest["run_id"] and manifest["pulled_at"] and len(manifest["checksum"]) == 64
    assert [p.name for p in (tmp_path / "deploy").iterdir()] == ["model"]  # no temp leftovers
    # the same version again: a no-op (the files are not rewritten)
    inode = (dest / MANIFEST_FILE).stat().st_ino
    assert pull(name, "champion", dest) == manifest
    assert (dest / MANIFEST_FILE).stat().st_ino == inode


def test_new_champion_replaces_the_installed_version(image_registry, tmp_path):
    name, _ = image_registry
    dest = tmp_path / "deploy" / "model"
    pull(name, "champion", dest)
    register(name, make_model_dir(tmp_path / "train2", "image", seed=1, threshold=0.07))
    manifest = pull(name, "champion", dest)
    assert manifest["version"] == "2" and read_manifest(dest)["threshold"] == pytest.approx(0.07)


def test_versions_sit_behind_a_current_link_and_only_two_are_kept(image_registry, tmp_path):
    from vigil.serving.loader import load_scorer

    name, _ = image_registry
    dest = tmp_path / "deploy" / "model"
    pull(name, "champion", dest)
    assert os.readlink(dest / CURRENT_LINK) == f"{VERSIONS_DIR}/1"
    assert resolve_model_dir(dest) == (dest / VERSIONS_DIR / "1").resolve()
    for seed, version in ((1, "2"), (2, "3")):
        register(name, make_model_dir(tmp_path / f"train{seed}", "image", seed=seed))
        pull(name, "champion", dest)
        assert os.readlink(dest / CURRENT_LINK) == f"{VERSIONS_DIR}/{version}"
    # version 3 serves; 2, which it replaced, stays for readers still loading it; 1 is gone
    assert sorted(p.name for p in (dest / VERSIONS_DIR).iterdir()) == ["2", "3"]
    assert sorted(p.name for p in dest.iterdir()) == [
        CURRENT_LINK,
        MANIFEST_FILE,
        PACKAGE_DIR,
        VERSIONS_DIR,
    ]
    assert load_scorer(dest).info.version == "3"  # the folder itself loads, through `current`
    assert [p.name for p in (tmp_path / "deploy").iterdir()] == ["model"]


def test_a_folder_from_an_older_vigil_is_kept_then_converted(image_registry, tmp_path):
    name, _ = image_registry
    pull(name, "champion", tmp_path / "new")
    flat = tmp_path / "deploy" / "model"  # manifest.json + package/ as plain entries
    shutil.copytree(resolve_model_dir(tmp_path / "new"), flat)
    inode = (flat / MANIFEST_FILE).stat().st_ino
    assert pull(name, "champion", flat)["version"] == "1"  # same version: a no-op
    assert (flat / MANIFEST_FILE).stat().st_ino == inode and not (flat / CURRENT_LINK).exists()
    register(name, make_model_dir(tmp_path / "train2", "image", seed=1))
    assert pull(name, "champion", flat)["version"] == "2"
    assert os.readlink(flat / CURRENT_LINK) == f"{VERSIONS_DIR}/2"
    assert read_manifest(flat)["version"] == "2"
    assert [p.name for p in (tmp_path / "deploy").iterdir()] == ["model"]


def _flat_version(root, version: int):
    """A pulled-looking folder: manifest.json + package/MLmodel, both naming ``version``."""
    folder = root / f"staging-{version}"
    (folder / PACKAGE_DIR).mkdir(parents=True)
    (folder / PACKAGE_DIR / "MLmodel").write_text(f"{version}\n")
    (folder / MANIFEST_FILE).write_text(json.dumps({"name": "m", "version": str(version)}))
    return folder


def test_every_step_of_a_swap_leaves_one_whole_model_in_place(tmp_path, monkeypatch):
    """Check what a reader of ``dest`` finds after every filesystem call a swap makes: always
    a whole model (manifest and package of one version), never a missing folder."""
    dest = tmp_path / "model"
    replace_dir(_flat_version(tmp_path, 0), dest)
    seen: list[str] = []

    def whole_model() -> None:
        version = json.loads((dest / MANIFEST_FILE).read_text())["version"]  # raises if missing
        assert (dest / PACKAGE_DIR / "MLmodel").read_text().strip() == version
        seen.append(version)

    for module, name in ((os, "rename"), (os, "replace"), (shutil, "move"), (shutil, "rmtree")):
        real = getattr(module, name)

        def checked(*args, _real=real, **kwargs):
            result = _real(*args, **kwargs)
            whole_model()
            return result

        monkeypatch.setattr(module, name, checked)
    for version in (1, 2, 3):
        pinned = resolve_model_dir(dest)  # a service resolving `current` just before the swap
        replace_dir(_flat_version(tmp_path, version), dest)
        assert (pinned / PACKAGE_DIR / "MLmodel").read_text().strip() == str(version - 1)
    assert seen[0] == "0" and seen[-1] == "3" and set(seen) == {"0", "1", "2", "3"}
    assert sorted(p.name for p in (dest / VERSIONS_DIR).iterdir()) == ["2", "3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # staging folders consumed


def test_tampered_package_is_refused_and_nothing_is_replaced(image_registry, tmp_path):
    name, _ = image_registry
    dest = tmp_path / "deploy" / "model"
    pull(name, "champion", dest)
    before = (dest / MANIFEST_FILE).read_text()
    register(name, make_model_dir(tmp_path / "train2", "image", seed=1))
    # Someone edits the stored threshold of version 2 in the artifact store.
    newest = max(_stored_files(tmp_path, "detector.json"), key=lambda p: p.stat().st_mtime)
    record = json.loads(newest.read_text())
    newest.write_text(json.dumps({**record, "threshold": 1e9}))
    with pytest.raises(ChecksumMismatchError, match="modified or corrupted"):
        pull(name, "champion", dest)
    assert (dest / MANIFEST_FILE).read_text() == before
    assert sorted(p.name for p in (tmp_path / "deploy").iterdir()) == ["model"]


def test_version_without_checksum_tag_unknown_alias_and_model(image_registry, tmp_path):
    name, _ = image_registry
    mlflow.MlflowClient().delete_model_version_tag(name, "1", CHECKSUM_TAG)
    with pytest.raises(PullError, match=CHECKSUM_TAG):
        pull(name, "champion", tmp_path / "a")
    with pytest.raises(PullError, match="cannot resolve"):
        pull(name, "no-such-alias", tmp_path / "b")
    with pytest.raises(PullError, match=r"no registered model 'no-such-model' in .*registered models: tiny"):
        pull("no-such-model", "champion", tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_pulled_package_scores_as_the_mlflow_pyfunc_does(image_registry, tmp_path):
    """The service's scorer and the package's own pyfunc give the same answers."""
    from vigil.registry.package import images_frame
    from vigil.serving.loader import load_scorer

    name, _ = image_registry
    dest = tmp_path / "deploy" / "model"
    pull(name, "champion", dest)
    images = sample_images(3, seed=5)
    ours = load_scorer(dest).score_images(images)
    theirs = mlflow.pyfunc.load_model(str(dest / PACKAGE_DIR)).predict(
        images_frame([png(image) for image in images])
    )
    assert list(theirs["score"]) == pytest.approx([r.score for r in ours], rel=1e-6)
    assert list(theirs["is_anomaly"]) == [r.is_anomaly for r in ours]


def test_pull_deletes_only_version_folders_it_created(image_registry, tmp_path):
    """Issue 15: `vigil pull --dest d` deleted every folder under d/versions/, also ones a
    person put there; now only folders holding vigil's marker are candidates for deletion."""
    from vigil.serving.install import VERSION_MARKER

    name, _ = image_registry
    dest = tmp_path / "deploy" / "model"
    pull(name, "champion", dest)
    assert (dest / VERSIONS_DIR / "1" / VERSION_MARKER).is_file()
    mine = dest / VERSIONS_DIR / "0-backup"
    mine.mkdir()
    (mine / "notes.txt").write_text("kept by hand")
    (dest / VERSIONS_DIR / "README").write_text("a file, not a version")
    for seed in (1, 2):
        register(name, make_model_dir(tmp_path / f"train{seed}", "image", seed=seed))
        pull(name, "champion", dest)
    names = sorted(p.name for p in (dest / VERSIONS_DIR).iterdir())
    assert names == ["0-backup", "2", "3", "README"]  # vigil's version 1 went, the rest stayed
    assert (mine / "notes.txt").read_text() == "kept by hand"
