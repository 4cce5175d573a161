"""Pull a registered model package: alias -> version -> verified local copy + manifest.

``pull("vigil-capsules-image", "champion", "deploy/model")`` resolves the alias, downloads the
version's MLflow model, checks the sha256 recorded at registration (a version tag written by
``vigil.registry.promotion``), and installs it as one complete version folder::

    deploy/model/
      versions/<version>/   one complete install
        manifest.json       name, version, alias, run id, threshold, metrics, checksum, pulled_at
        package/            the MLflow pyfunc model as registered (MLmodel, artifacts/...)
      current -> versions/<version>
      manifest.json -> current/manifest.json
      package -> current/package

A new version is downloaded and verified in a temporary sibling folder, moved under
``versions/``, and published by renaming a temporary symlink over ``current`` (``rename(2)`` is
atomic): a reader that resolves ``current`` once (``resolve_model_dir``) sees the old complete
version or the new one, never a missing or half-written folder. The version a swap replaces is
kept until the next swap (a reader may still be loading it), older ones are deleted: at most two
versions are on disk, and only folders vigil created are deleted: each version folder it installs
holds a ``.vigil-version`` marker, and anything else under ``versions/`` (a folder a person put
there, an install of an older vigil without the marker) is left alone. ``deploy/model`` itself still loads as a plain folder (``manifest.json`` and
``package`` at its top, through ``current``), so ``vigil serve --model-dir deploy/model`` and
``load_scorer("deploy/model")`` work unchanged. A package whose checksum does not match is
refused and nothing is replaced. Pulling the version already installed is a no-op.

A folder written by an older vigil (``manifest.json`` and ``package/`` as plain entries) is
converted on its next pull; that one conversion swaps the whole folder with two renames.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from vigil.serving.install import (
    PullError,
    MANIFEST_FILE,
    PACKAGE_DIR,
    read_manifest,
    replace_dir,
    resolve_model_dir,
)
from vigil.tracking import connect, model_not_found, require_store

log = logging.getLogger(__name__)



class ChecksumMismatchError(PullError):
    """The downloaded package does not match the checksum recorded at registration."""


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@alias`` -> (NAME, alias, None); ``models:/NAME/3`` -> (NAME, None, "3")."""
    if not uri.startswith("models:/"):
        raise PullError(f"{uri!r} is not a registry URI (expected models:/NAME@alias)")
    rest = uri[len("models:/") :].strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        if name and alias:
            return name, alias, None
    elif "/" in rest:
        name, version = rest.rsplit("/", 1)
        if name and version.isdigit():
            return name, None, version
    raise PullError(f"{uri!r}: expected models:/NAME@alias or models:/NAME/VERSION")


def resolve_version(client: MlflowClient, name: str, alias: str) -> ModelVersion:
    """The version ``alias`` points at; PullError naming the model and alias when none does."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception as error:
        missing = model_not_found(client, name)  # a wrong name: say which ones exist, where
        raise PullError(
            missing or f"cannot resolve {name}@{alias} in the registry: {error}"
        ) from error


def pull(
    model: str,
    alias: str = "champion",
    dest: Path | str = "model",
    *,
    client: MlflowClient | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """Install ``model@alias`` (or an explicit ``version``) into ``dest``; returns the manifest.

    Raises PullError (unknown model or alias, download failure, missing checksum) or
    ChecksumMismatchError (tampered or corrupt package); ``dest`` is untouched in both cases.
    """
    client = client or connect(require_store())  # never a new empty store in the cwd
    dest = Path(dest)
    found = (
        _get_version(client, model, version) if version else resolve_version(client, model, alias)
    )
    installed_dir = resolve_model_dir(dest)
    installed = read_manifest(installed_dir)
    if _is_installed(installed, installed_dir, found):
        log.info("%s version %s already in %s: nothing to do", model, found.version, dest)
        return installed
    from vigil.registry.integrity import Release

    expected_checksum(found)
    release = Release.from_tags(found.name, str(found.version), found.tags or {})
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.pull-", dir=dest.parent))
    try:
        package = staging / PACKAGE_DIR
        _download(found, package)
        verify_package(package, release, label=f"{model} version {found.version}")
        manifest = _build_manifest(client, found, None if version else alias, package, release)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        replace_dir(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("pulled %s version %s (%s) into %s", model, found.version, alias, dest)
    return manifest


def expected_checksum(found: ModelVersion) -> str:
    """The sha256 recorded on the version at registration; PullError when it is missing."""
    from vigil.registry.integrity import CHECKSUM_TAG

    value = (found.tags or {}).get(CHECKSUM_TAG)
    if not value:
        raise PullError(
            f"{found.name} version {found.version} has no {CHECKSUM_TAG!r} tag: it was not "
            "registered by vigil (or the tag was removed), so its package cannot be verified"
        )
    return value


def package_checksum(package_dir: Path | str) -> str:
    """sha256 of every package file, computed the way registration computed it."""
    from vigil.registry.integrity import package_checksum as checksum

    return checksum(Path(package_dir))


def verify_package(package_dir: Path | str, release, *, label: str = "package") -> str:
    """Check the files under ``package_dir`` against the version's ``Release`` record (checksum,
    promotion basis, signature when a key is set: ``vigil.registry.integrity``)."""
    from vigil.registry.integrity import IntegrityError, verify_release

    try:
        return verify_release(package_dir, release)
    except IntegrityError as error:  # its message names the model version already
        raise ChecksumMismatchError(str(error)) from error
    except OSError as error:
        raise ChecksumMismatchError(f"{label}: cannot read the package: {error}") from error


def _get_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    try:
        return client.get_model_version(name, version)
    except Exception as error:
        missing = model_not_found(client, name)
        raise PullError(
            missing or f"cannot find {name} version {version} in the registry: {error}"
        ) from error


def _is_installed(manifest: dict | None, dest: Path, found: ModelVersion) -> bool:
    """Same name and version in the version folder ``dest``, and its files still match the
    recorded checksum."""
    if not manifest or manifest.get("name") != found.name:
        return False
    if str(manifest.get("version")) != str(found.version):
        return False
    try:
        return package_checksum(dest / PACKAGE_DIR) == manifest.get("checksum")
    except (OSError, ValueError):
        return False


def _download(found: ModelVersion, target: Path) -> None:
    """Download the version's model files into ``target`` (which must not exist yet).

    From the version's ``source`` (the logged model, ``models:/m-...``): what registration
    checksummed. ``models:/NAME/VERSION`` would add MLflow's ``registered_model_meta`` file.
    """
    import mlflow

    uri = found.source or f"models:/{found.name}/{found.version}"
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        except Exception as error:
            raise PullError(f"cannot download {uri}: {error}") from error
        if not (local / "MLmodel").is_file():
            raise PullError(f"{uri}: downloaded files hold no MLmodel file: not a model package")
        shutil.move(str(local), target)


def _build_manifest(
    client: MlflowClient, found: ModelVersion, alias: str | None, package: Path, release
) -> dict[str, Any]:
    """The manifest written beside the package: what it is, where from, when, how good."""
    from vigil.registry.package import PackageError, read_detector_record
    from vigil.registry.promotion import metrics_from_tags

    try:
        record = read_detector_record(package)
    except PackageError as error:
        raise PullError(f"{found.name} version {found.version}: {error}") from None
    metrics: dict[str, Any] = {}
    if found.run_id:
        try:
            metrics = dict(client.get_run(found.run_id).data.metrics)
        except Exception as error:  # noqa: BLE001 - metrics are informative, not required
            log.warning("cannot read metrics of run %s: %s", found.run_id, error)
    metrics.update(metrics_from_tags(found.tags or {}))  # the gate's view, recorded on the version
    return {
        "name": found.name,
        "version": str(found.version),
        "alias": alias,
        "run_id": found.run_id,
        "threshold": record.threshold,
        "modality": record.modality,
        "family": record.family,
        "metrics": metrics,
        **release.as_manifest(),  # checksum, promotion basis, signature: loaders verify them
        "source": found.source,
        "pulled_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
