"""Package integrity wherever a package loads (issue 15): every file hashed, the promotion basis
and its HMAC signature checked, refusals that name the version (real registry, real folders)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlflow
import pytest
from conftest import make_model_dir, register

from vigil.registry.integrity import (
    BASIS_TAG,
    CHECKSUM_TAG,
    KEY_ENV,
    SIGNATURE_TAG,
    IntegrityError,
    Release,
    package_checksum,
    sign,
    verify_release,
)
from vigil.serving.loader import ModelLoadError, load_scorer
from vigil.serving.pull import ChecksumMismatchError, pull
from vigil.serving.install import PACKAGE_DIR


def _pulled(image_registry, tmp_path):
    name, _ = image_registry
    dest = tmp_path / "deploy" / "model"
    pull(name, "champion", dest)
    return name, dest


def test_an_added_pyc_changes_the_checksum_and_the_load_is_refused(image_registry, tmp_path):
    _, dest = _pulled(image_registry, tmp_path)
    before = package_checksum(dest / PACKAGE_DIR)
    payload = dest / PACKAGE_DIR / "code" / "vigil" / "__pycache__" / "atomic.cpython-311.pyc"
    payload.parent.mkdir(exist_ok=True)
    payload.write_bytes(b"not what registration hashed")
    assert package_checksum(dest / PACKAGE_DIR) != before
    with pytest.raises(ModelLoadError, match="modified or corrupted"):
        load_scorer(dest)  # vigil serve --model-dir: checked before anything loads


def test_a_locally_tampered_weights_file_is_refused_by_model_dir(image_registry, tmp_path):
    _, dest = _pulled(image_registry, tmp_path)
    weights = next((dest / PACKAGE_DIR).rglob("weights.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ModelLoadError, match="modified or corrupted"):
        load_scorer(dest)


def test_a_version_that_neither_passed_nor_was_forced_is_not_served(mlflow_store, tmp_path):
    version = register("tiny-image", make_model_dir(tmp_path / "train", "image"))
    mlflow.MlflowClient().delete_model_version_tag("tiny-image", version, BASIS_TAG)
    with pytest.raises(ChecksumMismatchError, match="neither passed the gate nor was forced"):
        pull("tiny-image", "champion", tmp_path / "deploy")
    assert not (tmp_path / "deploy").exists()


def test_with_a_key_the_registry_alone_cannot_vouch_for_a_package(
    mlflow_store, tmp_path, monkeypatch
):
    monkeypatch.setenv(KEY_ENV, "line-7-secret")
    client = mlflow.MlflowClient()
    version = register("tiny-image", make_model_dir(tmp_path / "train", "image"))
    # registered by test helpers, not by the gate: no signature yet -> refused
    with pytest.raises(ChecksumMismatchError, match="unsigned"):
        pull("tiny-image", "champion", tmp_path / "a")
    checksum = client.get_model_version("tiny-image", version).tags[CHECKSUM_TAG]
    client.set_model_version_tag("tiny-image", version, SIGNATURE_TAG,
                                 sign("tiny-image", version, checksum, "gate"))
    pull("tiny-image", "champion", tmp_path / "b")  # signed by the key holder: accepted
    # whoever can write the registry swaps the checksum tag (with matching files) and keeps the
    # signature: the signature no longer vouches for the recorded files
    client.set_model_version_tag("tiny-image", version, CHECKSUM_TAG, "0" * 64)
    release = Release.from_tags("tiny-image", version, {
        **client.get_model_version("tiny-image", version).tags, CHECKSUM_TAG: checksum,
    })
    forged = Release(release.name, release.version, release.checksum, "forced", release.signature)
    with pytest.raises(IntegrityError, match="signature does not match"):
        verify_release(tmp_path / "b" / PACKAGE_DIR, forged)


def test_pyfunc_refuses_a_package_not_installed_by_pull_when_a_key_is_set(
    image_registry, tmp_path
):
    _, dest = _pulled(image_registry, tmp_path)
    package = dest / PACKAGE_DIR
    code = (
        "import mlflow.pyfunc, sys\n"
        f"mlflow.pyfunc.load_model({str(package)!r})\n"
    )
    env = {**os.environ, KEY_ENV: "k"}
    unsigned = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=300)
    assert unsigned.returncode != 0 and "unsigned" in unsigned.stderr, unsigned.stderr[-2000:]
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=300, env={k: v for k, v in os.environ.items() if k != KEY_ENV})
    assert plain.returncode == 0, plain.stderr[-2000:]
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["basis"] == "gate" and manifest["checksum"] == package_checksum(package)


def test_vigil_turns_mlflow_pickle_loading_off_by_default():
    code = "import os, vigil; print(os.environ['MLFLOW_ALLOW_PICKLE_DESERIALIZATION'])"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "false"
