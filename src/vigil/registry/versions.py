"""Registry primitives for promotion: tag names, reading aliases and versions back, verifying a
version's files, and one exception type (``PromotionError``) for every registry failure.

Raw MLflow and connection errors are wrapped by ``registry_errors`` into ``PromotionError`` naming
the step, so callers handle one exception type.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.entities.model_registry.model_version_status import ModelVersionStatus
from mlflow.tracking import MlflowClient

from vigil.registry.gate import SETTINGS_KEY
from vigil.registry.integrity import CHECKSUM_TAG, package_checksum
from vigil.registry.package import LoggedPackage
from vigil import names

CHAMPION = "champion"
CHALLENGER = "challenger"
METRIC_TAG_PREFIX = names.METRIC_PREFIX
TAG_GATE_PASSED = names.GATE_PASSED
TAG_GATE_REASONS = names.GATE_REASONS
TAG_GATE_CRITERIA = names.GATE_CRITERIA
TAG_GATE_SETTINGS = names.GATE_SETTINGS  # JSON of the gate settings used
TAG_GATE_SETTINGS_HASH = names.GATE_SETTINGS_HASH  # the gate reads it back from a champion
#: ``pending`` from creation until the decision is recorded, then ``recorded``; ``orphaned`` when
#: a later run finds a version whose registration was interrupted before its decision.
TAG_DECISION_STATE = names.DECISION_STATE
TAG_PROMOTION_ALLOWED = names.PROMOTION_ALLOWED
TAG_PROMOTION_POLICY = names.PROMOTION_POLICY
TAG_PROMOTION_WHY = names.PROMOTION_WHY
TAG_DVC_EXPERIMENT = names.DVC_EXPERIMENT
TAG_FORCED_BY = names.FORCED_BY
TAG_FORCE_REASON = names.FORCE_REASON
TAG_FORCED_AT = names.FORCED_AT
MAX_TAG_VALUE = 5000
#: Lineage keys the gate reads back from a champion's ``vigil.<key>`` tags.
LINEAGE_HASHES = ("data_hash", "test_split_hash")


class PromotionError(RuntimeError):
    """Registration or promotion could not complete; the champion alias was not moved."""


def _registry_failures() -> tuple[type[BaseException], ...]:
    """Exception types that mean the registry or its artifact store failed, not bad input."""
    from mlflow.exceptions import MlflowException

    failures: list[type[BaseException]] = [MlflowException, ConnectionError, TimeoutError]
    try:
        from requests.exceptions import RequestException

        failures.append(RequestException)
    except ImportError:  # pragma: no cover - requests comes with mlflow
        pass
    return tuple(failures)


@contextmanager
def registry_errors(step: str) -> Iterator[None]:
    """Turn a raw MLflow, HTTP or connection error inside the block into ``PromotionError``
    naming ``step`` (e.g. "registering version of vigil-capsules-image")."""
    try:
        yield
    except PromotionError:
        raise
    except _registry_failures() as error:
        text = str(error).strip()
        detail = text.splitlines()[0] if text else "no message"
        raise PromotionError(f"{step}: {type(error).__name__}: {detail}") from error


def model_name(prefix: str, dataset: str, modality: str) -> str:
    return names.model_name(prefix, dataset, modality)


def is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


# --- reading the registry -------------------------------------------------------------------


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version ``alias`` points at, or None when the model or alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def metrics_from_tags(tags: dict[str, str]) -> dict[str, Any]:
    """``vigil.metric.<key>`` tags -> ``{key: float}`` plus ``data_hash``, ``test_split_hash``
    and ``gate_settings_hash`` (the gate's input)."""
    metrics: dict[str, Any] = {}
    for key, value in tags.items():
        if key.startswith(METRIC_TAG_PREFIX):
            try:
                metrics[key[len(METRIC_TAG_PREFIX) :]] = float(value)
            except ValueError:
                continue
    for key in LINEAGE_HASHES:
        if tags.get(f"vigil.{key}"):
            metrics[key] = tags[f"vigil.{key}"]
    if tags.get(TAG_GATE_SETTINGS_HASH):
        metrics[SETTINGS_KEY] = tags[TAG_GATE_SETTINGS_HASH]
    return metrics


def candidate_tags(
    metrics: dict[str, Any],
    gate: Any,
    package: LoggedPackage,
    lineage: dict[str, str | None],
) -> dict[str, str]:
    """The tags a new version is created with: reasons, criteria, settings hash, metrics,
    lineage, checksum, and ``vigil.decision.state=pending``. The verdict tag
    (``vigil.gate.passed``) is written only after the decision is recorded."""
    tags = {
        TAG_DECISION_STATE: "pending",
        TAG_GATE_REASONS: "; ".join(gate.reasons)[:MAX_TAG_VALUE],
        TAG_GATE_CRITERIA: "; ".join(getattr(gate, "criteria", []))[:MAX_TAG_VALUE],
        CHECKSUM_TAG: package.checksum,
        names.THRESHOLD: repr(package.threshold),
        names.WEIGHTS_SHA256: package.weights_sha256,
    }
    if getattr(gate, "settings_hash", None):
        tags[TAG_GATE_SETTINGS_HASH] = str(gate.settings_hash)
    for key, value in lineage.items():
        if value:
            tags[f"vigil.{key}"] = str(value)[:MAX_TAG_VALUE]
    for key, value in metrics.items():
        if is_number(value):
            tags[f"{METRIC_TAG_PREFIX}{key}"] = repr(float(value))
    return tags


# --- writing the registry -------------------------------------------------------------------


def ensure_registered_model(client: MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="vigil anomaly detector")
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def wait_until_ready(
    client: MlflowClient, name: str, version: str, timeout_s: float = 300.0, poll_s: float = 0.5
) -> ModelVersion:
    """Poll until the version is READY; PromotionError when it fails or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = client.get_model_version(name, version)
        status = (
            ModelVersionStatus.from_string(found.status)
            if isinstance(found.status, str)
            else found.status
        )
        if status == ModelVersionStatus.READY:
            return found
        if status == ModelVersionStatus.FAILED_REGISTRATION:
            raise PromotionError(
                f"{name} version {version} failed registration: {found.status_message}"
            )
        if time.monotonic() > deadline:
            raise PromotionError(f"{name} version {version} not READY after {timeout_s:.0f} s")
        time.sleep(poll_s)


def verify_version(
    client: MlflowClient, name: str, version: str, expected: str | None = None
) -> str:
    """Download the version's files and check them against ``expected`` (default: its tag)."""
    import mlflow

    found = wait_until_ready(client, name, version)
    expected = expected or (found.tags or {}).get(CHECKSUM_TAG)
    if not expected:
        raise PromotionError(f"{name} version {version} has no {CHECKSUM_TAG!r} tag to verify")
    # the logged model itself (what registration checksummed); models:/NAME/V would add
    # MLflow's registered_model_meta file
    uri = found.source or f"models:/{name}/{version}"
    with tempfile.TemporaryDirectory(prefix="vigil-verify-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        except Exception as error:
            detail = " ".join(str(error).split())  # one line, whatever the server answered
            raise PromotionError(
                f"{name} version {version}: cannot download {uri} to verify it: {detail}"
            ) from error
        actual = package_checksum(local)
    if actual != expected:
        raise PromotionError(
            f"{uri}: files hash to {actual[:16]}... but {expected[:16]}... was recorded: "
            "the package is incomplete or was modified; not promoting it"
        )
    return actual
