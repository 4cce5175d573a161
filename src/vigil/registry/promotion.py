"""Registration and gated promotion with registry aliases (never stages).

Every candidate becomes a new version of ``<prefix>-<dataset>-<modality>``, created with its tags
in one call (gate verdict and reasons, ``vigil.metric.*``, git commit, data hash, test-split hash,
package sha256), and gets the ``challenger`` alias. Only a gate pass moves ``champion``;
``force_promote`` moves it on a person's say-so and records who and why.

The champion alias never points at a half-registered version: the alias is the last registry
write, made only after the version is READY and its downloaded files match the checksum
recorded at logging. Any failure before it (registry unreachable, tampered files, the champion
moved by someone else meanwhile) raises ``PromotionError`` and leaves the alias where it was:
raw MLflow and connection errors are wrapped by ``registry_errors`` into ``PromotionError`` naming
the step, so callers handle one exception type.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.entities.model_registry.model_version_status import ModelVersionStatus
from mlflow.tracking import MlflowClient

from vigil.atomic import atomic_write_json
from vigil.config import GateConfig
from vigil.registry.package import CHECKSUM_TAG, LoggedPackage, package_checksum

CHAMPION = "champion"
CHALLENGER = "challenger"
METRIC_TAG_PREFIX = "vigil.metric."
TAG_GATE_PASSED = "vigil.gate.passed"
TAG_GATE_REASONS = "vigil.gate.reasons"
TAG_FORCED_BY = "vigil.forced_by"
TAG_FORCE_REASON = "vigil.force_reason"
TAG_FORCED_AT = "vigil.forced_at"
_MAX_TAG_VALUE = 5000
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


@dataclass(frozen=True)
class Decision:
    """What happened to one candidate: the decision file's content."""

    model_name: str
    version: str
    passed: bool
    promoted: bool
    reasons: list[str]
    champion_before: str | None
    champion_after: str | None
    checksum: str | None = None
    run_id: str | None = None
    forced: bool = False
    who: str | None = None
    why: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    decided_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One plain line: the verdict a person reads first."""
        if self.forced:
            head = f"FORCED: {self.model_name} version {self.version} is champion"
            return f"{head} (by {self.who}: {self.why}; was {self.champion_before})"
        verdict = "PASSED" if self.passed else "REJECTED"
        where = (
            f"version {self.version} is now champion"
            if self.promoted
            else f"champion stays {self.champion_before or '(none)'}"
        )
        return f"gate {verdict}: {self.model_name} version {self.version}; {where}"


def model_name(prefix: str, dataset: str, modality: str) -> str:
    return f"{prefix}-{dataset}-{modality}"


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
    """``vigil.metric.<key>`` tags -> ``{key: float}`` plus ``data_hash`` and
    ``test_split_hash`` (the gate's input)."""
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
    return metrics


def candidate_tags(
    metrics: dict[str, Any],
    gate: Any,
    package: LoggedPackage,
    lineage: dict[str, str | None],
) -> dict[str, str]:
    """All tags of a new version: verdict, metrics, lineage, checksum."""
    tags = {
        TAG_GATE_PASSED: str(bool(gate.passed)).lower(),
        TAG_GATE_REASONS: "; ".join(gate.reasons)[:_MAX_TAG_VALUE],
        CHECKSUM_TAG: package.checksum,
        "vigil.threshold": repr(package.threshold),
        "vigil.weights_sha256": package.weights_sha256,
    }
    for key, value in lineage.items():
        if value:
            tags[f"vigil.{key}"] = str(value)
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(float(value)):
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
    uri = f"models:/{name}/{version}"
    with tempfile.TemporaryDirectory(prefix="vigil-verify-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        except Exception as error:
            raise PromotionError(f"cannot download {uri} to verify it: {error}") from error
        actual = package_checksum(local)
    if actual != expected:
        raise PromotionError(
            f"{uri}: files hash to {actual[:16]}... but {expected[:16]}... was recorded: "
            "the package is incomplete or was modified; not promoting it"
        )
    return actual


def register_candidate(
    client: MlflowClient,
    name: str,
    package: LoggedPackage,
    metrics: dict[str, Any],
    gate_cfg: GateConfig,
    lineage: dict[str, str | None] | None = None,
) -> Decision:
    """Register ``package`` as a new version of ``name``, gate it, alias it; see module doc.

    ``metrics``: the flat dict of ``reports/<D>/metrics.json``; ``lineage``: ``git_commit``,
    ``data_hash``, ``dataset``, ``modality`` (written as ``vigil.<key>`` tags).
    """
    from vigil.evaluation.gate import evaluate_gate

    lineage = dict(lineage or {})
    candidate = dict(metrics)
    for key in LINEAGE_HASHES:
        if lineage.get(key):
            candidate.setdefault(key, lineage[key])
        elif candidate.get(key):
            lineage[key] = str(candidate[key])  # e.g. test_split_hash from metrics.json
    with registry_errors(f"reading the champion of {name}"):
        ensure_registered_model(client, name)
        before = alias_version(client, name, CHAMPION)
    champion = metrics_from_tags(before.tags or {}) if before is not None else None
    gate = evaluate_gate(candidate, champion, gate_cfg)
    with registry_errors(f"registering a new version of {name}"):
        created = client.create_model_version(
            name,
            source=package.model_uri,
            run_id=package.run_id,
            tags=candidate_tags(metrics, gate, package, lineage),
            model_id=package.model_id,
        )
    version = str(created.version)
    with registry_errors(f"verifying and aliasing {name} version {version}"):
        verify_version(client, name, version, package.checksum)
        client.set_registered_model_alias(name, CHALLENGER, version)
    promoted = False
    if gate.passed:  # the champion alias is the last registry write
        with registry_errors(f"moving {CHAMPION} of {name} to version {version}"):
            _promote(client, name, version, before)
        promoted = True
    return Decision(
        model_name=name,
        version=version,
        passed=bool(gate.passed),
        promoted=promoted,
        reasons=list(gate.reasons),
        champion_before=None if before is None else str(before.version),
        champion_after=version if promoted else (None if before is None else str(before.version)),
        checksum=package.checksum,
        run_id=package.run_id,
        metrics={k: float(v) for k, v in metrics.items() if _is_number(v)},
        gate=gate.to_dict() if hasattr(gate, "to_dict") else {},
    )


def _promote(client: MlflowClient, name: str, version: str, before: ModelVersion | None) -> None:
    """Move ``champion`` to ``version`` unless someone moved it since ``before`` was read."""
    now = alias_version(client, name, CHAMPION)
    was = None if before is None else str(before.version)
    is_now = None if now is None else str(now.version)
    if was != is_now:
        raise PromotionError(
            f"{name}: champion moved from {was} to {is_now} during this promotion; "
            f"version {version} was not promoted (rerun to gate it against the new champion)"
        )
    client.set_registered_model_alias(name, CHAMPION, version)


def force_promote(
    name: str,
    version: str,
    who: str,
    why: str,
    *,
    client: MlflowClient | None = None,
    decision_dir: Path | str | None = "reports/promotions",
) -> Decision:
    """Make ``version`` champion whatever its gate verdict; record who and why.

    The override skips the gate, not integrity: the version must be READY and its files must
    match its checksum. Who/why are tagged on the version before the alias moves, and the
    decision is written to ``<decision_dir>/<name>-v<version>-<UTC time>.json``.
    """
    from vigil.registry.tracking import connect

    if not why or not why.strip():
        raise ValueError("a forced promotion needs a reason (--reason)")
    if not who or not who.strip():
        raise ValueError("a forced promotion needs a person (--who or $USER)")
    client = client or connect()
    version = str(version)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    with registry_errors(f"force-promoting {name} version {version}"):
        before = alias_version(client, name, CHAMPION)
        found = wait_until_ready(client, name, version)
        checksum = verify_version(client, name, version)
        client.set_model_version_tag(name, version, TAG_FORCED_BY, who)
        client.set_model_version_tag(name, version, TAG_FORCE_REASON, why[:_MAX_TAG_VALUE])
        client.set_model_version_tag(name, version, TAG_FORCED_AT, stamp)
        client.set_registered_model_alias(name, CHAMPION, version)
    tags = found.tags or {}
    decision = Decision(
        model_name=name,
        version=version,
        passed=tags.get(TAG_GATE_PASSED) == "true",
        promoted=True,
        reasons=[r for r in tags.get(TAG_GATE_REASONS, "").split("; ") if r],
        champion_before=None if before is None else str(before.version),
        champion_after=version,
        checksum=checksum,
        run_id=found.run_id,
        forced=True,
        who=who,
        why=why,
        metrics={k: v for k, v in metrics_from_tags(tags).items() if _is_number(v)},
        decided_at=stamp,
    )
    if decision_dir is not None:
        safe = stamp.replace(":", "").replace("+", "Z")
        write_decision(decision, Path(decision_dir) / f"{name}-v{version}-{safe}.json")
    return decision


def write_decision(decision: Decision, path: Path | str) -> Path:
    """Write the decision JSON atomically (temp file in the same folder, then rename)."""
    return atomic_write_json(path, decision.to_dict(), indent=2)


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )
