"""Package integrity: what a package's files hash to, and who vouches for promoting it.

- ``package_checksum(dir)``: sha256 over ``<relative path>\\0<file sha256>\\n`` of EVERY file of
  the package, sorted by path (no exclusions: an added ``.pyc`` changes it). Registration records
  it as the ``vigil.package_sha256`` version tag; every loader recomputes it before anything in the
  package is imported or unpickled.
- Signing (``VIGIL_SIGNING_KEY``, a secret the registry never sees): when the gate passes, or when
  ``vigil promote --force`` records an override, the statement "version V of NAME, whose files
  hash to C, may serve because of BASIS (gate | forced)" is signed with HMAC-SHA256 and stored as
  the ``vigil.signature`` tag. Whoever can write the registry can change tags and files, but
  cannot forge that signature. With a key configured, loaders refuse unsigned or badly signed
  packages; without one they check the checksum only (accidents, not attackers).
- Serving refuses a version that neither passed the gate nor was forced on the record.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vigil import names

CHECKSUM_TAG = names.PACKAGE_SHA256
SIGNATURE_TAG = names.SIGNATURE
BASIS_TAG = names.PROMOTION_BASIS
KEY_ENV = "VIGIL_SIGNING_KEY"


class IntegrityError(ValueError):
    """A package does not match its record, is unsigned while a key is configured, or may not
    serve; the message names the model version and what to do."""


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_files(package_dir: Path | str) -> list[Path]:
    """Every file under the package folder (relative paths, sorted); symlinks are refused."""
    root = Path(package_dir)
    if not root.is_dir():
        raise IntegrityError(f"{root}: package folder not found")
    files = []
    for path in root.rglob("*"):
        if path.is_symlink():
            raise IntegrityError(f"{path}: a symbolic link inside a package is not allowed")
        if path.is_file():
            files.append(path.relative_to(root))
    return sorted(files, key=lambda rel: rel.as_posix())


def package_checksum(package_dir: Path | str) -> str:
    """sha256 over ``<relative path>\\0<file sha256>\\n`` for every file, sorted by path."""
    root = Path(package_dir)
    files = package_files(root)
    if not files:
        raise IntegrityError(f"{root}: package folder is empty")
    digest = hashlib.sha256()
    for rel in files:
        digest.update(f"{rel.as_posix()}\0{file_sha256(root / rel)}\n".encode())
    return digest.hexdigest()


def signing_key() -> bytes | None:
    value = os.environ.get(KEY_ENV, "")
    return value.encode() if value else None


def _statement(name: str, version: str, checksum: str, basis: str) -> bytes:
    return json.dumps(
        {"model": name, "version": str(version), "checksum": checksum, "basis": basis},
        sort_keys=True,
    ).encode()


def sign(name: str, version: str, checksum: str, basis: str) -> str | None:
    """HMAC-SHA256 of the promotion statement, or None when no key is configured."""
    key = signing_key()
    if key is None:
        return None
    return hmac.new(key, _statement(name, version, checksum, basis), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Release:
    """What the registry says about one version, as loaders need it."""

    name: str
    version: str
    checksum: str | None
    basis: str | None  # "gate", "forced" or None (may not serve)
    signature: str | None

    @classmethod
    def from_tags(cls, name: str, version: str, tags: dict[str, str]) -> Release:
        basis = tags.get(BASIS_TAG)
        if basis is None:  # versions recorded before the basis tag existed
            if tags.get(names.FORCED_BY):
                basis = "forced"
            elif tags.get(names.GATE_PASSED) == "true":
                basis = "gate"
        return cls(name, str(version), tags.get(CHECKSUM_TAG), basis, tags.get(SIGNATURE_TAG))

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> Release:
        return cls(
            str(manifest.get("name")), str(manifest.get("version")), manifest.get("checksum"),
            manifest.get("basis"), manifest.get("signature"),
        )

    def as_manifest(self) -> dict[str, Any]:
        return {"checksum": self.checksum, "basis": self.basis, "signature": self.signature}


def verify_release(package_dir: Path | str, release: Release, *, serving: bool = True) -> str:
    """Check a package folder against its release record before anything loads it.

    The files must hash to the recorded checksum; with ``serving``, the version must have passed
    the gate or been forced on the record; with a key configured, the signature must vouch for
    exactly that checksum and basis. Returns the checksum; IntegrityError otherwise.
    """
    label = f"{release.name} version {release.version}"
    if not release.checksum:
        raise IntegrityError(
            f"{label}: no recorded checksum ({CHECKSUM_TAG}): not registered by vigil; refusing "
            "to load it"
        )
    actual = package_checksum(package_dir)
    if actual != release.checksum:
        raise IntegrityError(
            f"{label}: package files hash to {actual[:16]}... but {release.checksum[:16]}... was "
            "recorded: the package was modified or corrupted; refusing to load it"
        )
    if serving and release.basis not in ("gate", "forced"):
        raise IntegrityError(
            f"{label}: it neither passed the gate nor was forced on the record (`vigil promote "
            "--force VERSION --reason ...`); refusing to serve it"
        )
    key = signing_key()
    if key is not None:
        if not release.signature:
            raise IntegrityError(
                f"{label}: unsigned, and {KEY_ENV} is set: only versions promoted by a vigil that "
                "holds the signing key may load"
            )
        expected = hmac.new(
            key, _statement(release.name, release.version, actual, release.basis or ""),
            hashlib.sha256,
        ).hexdigest()
        if not hmac.compare_digest(expected, release.signature):
            raise IntegrityError(
                f"{label}: its signature does not match its files and promotion basis: the "
                "registry record was altered; refusing to load it"
            )
    return actual
