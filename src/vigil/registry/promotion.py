"""Registration and gated promotion with registry aliases (never stages).

Every candidate becomes a new version of ``<prefix>-<dataset>-<modality>`` created with its tags
in one call (metrics, reasons, criteria, gate-settings hash, lineage, package sha256) and gets the
``challenger`` alias. ``champion`` moves only on a gate pass by a run that is allowed to promote
(``vigil.registry.policy``); ``force_promote`` moves it on a person's say-so, on the record.

Order of writes (crash-safe): the version is created with ``vigil.decision.state=pending`` and no
verdict tag; its files are verified against the recorded checksum; ``challenger`` is set; the
decision file is written; then the verdict tag (``vigil.gate.passed``) and state ``recorded``;
the ``champion`` alias is the last write. A failure after the decision file rewrites it as
``failed`` (nothing promoted) and raises ``PromotionError``; a crash leaves a ``pending`` version
with no verdict, which the next registration of that model marks ``orphaned`` and rejected
(``repair_orphans``), so no READY version claims a pass without its decision.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from vigil.config import GateConfig
from vigil.registry.decision import Decision, rolled_back, write_decision
from vigil.registry.package import LoggedPackage
from vigil.registry.policy import PolicyVerdict
from vigil.registry.versions import (  # noqa: F401  (re-exported: the registry's public names)
    CHALLENGER,
    CHAMPION,
    LINEAGE_HASHES,
    MAX_TAG_VALUE,
    METRIC_TAG_PREFIX,
    TAG_DECISION_STATE,
    TAG_DVC_EXPERIMENT,
    TAG_FORCE_REASON,
    TAG_FORCED_AT,
    TAG_FORCED_BY,
    TAG_GATE_PASSED,
    TAG_GATE_REASONS,
    TAG_GATE_SETTINGS,
    TAG_PROMOTION_ALLOWED,
    TAG_PROMOTION_POLICY,
    TAG_PROMOTION_WHY,
    PromotionError,
    alias_version,
    candidate_tags,
    ensure_registered_model,
    is_number,
    metrics_from_tags,
    model_name,
    registry_errors,
    verify_version,
    wait_until_ready,
)

#: A ``pending`` version younger than this may still be mid-registration by another process.
ORPHAN_AGE_S = 3600.0


def repair_orphans(
    client: MlflowClient, name: str, min_age_s: float = ORPHAN_AGE_S
) -> list[str]:
    """Mark versions whose registration was interrupted before the decision was recorded
    (``vigil.decision.state=pending``, older than ``min_age_s``) as rejected and ``orphaned``;
    returns one plain note per repaired version."""
    now_ms = datetime.now(UTC).timestamp() * 1000
    notes = []
    for found in client.search_model_versions(f"name = '{name}'"):
        tags = found.tags or {}
        if tags.get(TAG_DECISION_STATE) != "pending":
            continue
        if now_ms - float(found.creation_timestamp or 0) < min_age_s * 1000:
            continue
        reason = (
            "registration was interrupted before its decision was recorded; marked rejected "
            "by a later run (register the model again to gate it)"
        )
        client.set_model_version_tag(name, found.version, TAG_GATE_PASSED, "false")
        client.set_model_version_tag(
            name, found.version, TAG_GATE_REASONS,
            f"{reason}; {tags.get(TAG_GATE_REASONS, '')}"[:MAX_TAG_VALUE],
        )
        client.set_model_version_tag(name, found.version, TAG_DECISION_STATE, "orphaned")
        notes.append(f"repaired {name} version {found.version}: {reason}")
    return notes


def _policy_tags(policy: PolicyVerdict | None, settings: dict[str, Any] | None) -> dict[str, str]:
    import json

    tags = {}
    if policy is not None:
        tags[TAG_PROMOTION_POLICY] = policy.policy
        tags[TAG_PROMOTION_ALLOWED] = str(policy.allowed).lower()
        tags[TAG_PROMOTION_WHY] = policy.why[:MAX_TAG_VALUE]
        if policy.experiment is not None:
            tags[TAG_DVC_EXPERIMENT] = policy.experiment or "(unnamed)"
    if settings is not None:
        tags[TAG_GATE_SETTINGS] = json.dumps(settings, sort_keys=True)[:MAX_TAG_VALUE]
    return tags


def register_candidate(
    client: MlflowClient,
    name: str,
    package: LoggedPackage,
    metrics: dict[str, Any],
    gate_cfg: GateConfig,
    lineage: dict[str, str | None] | None = None,
    *,
    policy: PolicyVerdict | None = None,
    decision_path: Path | str | None = None,
    settings: dict[str, Any] | None = None,
    orphan_age_s: float = ORPHAN_AGE_S,
) -> Decision:
    """Register ``package`` as a new version of ``name``, gate it, alias it; see module doc.

    ``metrics``: the flat dict of ``reports/<D>/metrics.json`` (plus ``gate_settings_hash``);
    ``lineage``: ``git_commit``, ``data_hash``, ``dataset``, ``modality`` (written as
    ``vigil.<key>`` tags); ``policy``: whether this run may move ``champion`` (None: allowed);
    ``decision_path``: where the decision is recorded before the alias moves; ``settings``: the
    gate settings (tagged as JSON).
    """
    from vigil.registry.gate import evaluate_gate

    lineage = dict(lineage or {})
    candidate = dict(metrics)
    for key in LINEAGE_HASHES:
        if lineage.get(key):
            candidate.setdefault(key, lineage[key])
        elif candidate.get(key):
            lineage[key] = str(candidate[key])  # e.g. test_split_hash from metrics.json
    with registry_errors(f"reading the champion of {name}"):
        ensure_registered_model(client, name)
        notes = repair_orphans(client, name, orphan_age_s)
        before = alias_version(client, name, CHAMPION)
    champion = metrics_from_tags(before.tags or {}) if before is not None else None
    gate = evaluate_gate(candidate, champion, gate_cfg)
    tags = {**candidate_tags(metrics, gate, package, lineage), **_policy_tags(policy, settings)}
    with registry_errors(f"registering a new version of {name}"):
        created = client.create_model_version(
            name, source=package.model_uri, run_id=package.run_id, tags=tags,
            model_id=package.model_id,
        )
    version = str(created.version)
    with registry_errors(f"verifying and aliasing {name} version {version}"):
        verify_version(client, name, version, package.checksum)
        client.set_registered_model_alias(name, CHALLENGER, version)
    promote = bool(gate.passed) and (policy is None or policy.allowed)
    was = None if before is None else str(before.version)
    decision = Decision(
        model_name=name,
        version=version,
        passed=bool(gate.passed),
        promoted=promote,
        reasons=list(gate.reasons),
        champion_before=was,
        champion_after=version if promote else was,
        checksum=package.checksum,
        run_id=package.run_id,
        metrics={k: float(v) for k, v in metrics.items() if is_number(v)},
        gate=gate.to_dict(),
        criteria=list(gate.criteria),
        promotion=policy.to_dict() if policy is not None else {"allowed": True, "why": "library"},
        notes=notes,
    )
    _record_then_promote(client, decision, decision_path, before)
    return decision


def _record_then_promote(
    client: MlflowClient, decision: Decision, path: Path | str | None, before: ModelVersion | None
) -> None:
    """Decision file, then verdict tags, then (on a promotion) the champion alias, last."""
    name, version = decision.model_name, decision.version
    if path is not None:
        write_decision(decision, path)
    try:
        with registry_errors(f"recording the verdict on {name} version {version}"):
            client.set_model_version_tag(
                name, version, TAG_GATE_PASSED, str(decision.passed).lower()
            )
            if decision.passed:
                vouch(client, name, version, "gate")
            client.set_model_version_tag(name, version, TAG_DECISION_STATE, "recorded")
        if decision.promoted:
            with registry_errors(f"moving {CHAMPION} of {name} to version {version}"):
                _promote(client, name, version, before)
    except PromotionError as error:
        if path is not None:
            write_decision(rolled_back(decision, error), path)
        raise


def vouch(client: MlflowClient, name: str, version: str, basis: str) -> None:
    """Record why the version may serve (``gate`` or ``forced``) and, with a signing key, sign
    that statement over its recorded checksum (``vigil.registry.integrity``)."""
    from vigil.registry.integrity import BASIS_TAG, CHECKSUM_TAG, SIGNATURE_TAG, sign

    checksum = (client.get_model_version(name, version).tags or {}).get(CHECKSUM_TAG)
    client.set_model_version_tag(name, version, BASIS_TAG, basis)
    signature = sign(name, version, checksum, basis) if checksum else None
    if signature:
        client.set_model_version_tag(name, version, SIGNATURE_TAG, signature)


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
    match its checksum. The decision is written to ``<decision_dir>/<name>-v<version>-<UTC
    time>.json`` first (a failure to write it stops here, champion unchanged), then who/why are
    tagged on the version and the alias moves; when a registry step fails, the record is
    rewritten as ``failed`` and ``PromotionError`` raised.
    """
    from vigil.tracking import connect, model_not_found, require_store

    if not why or not why.strip():
        raise ValueError("a forced promotion needs a reason (--reason)")
    if not who or not who.strip():
        raise ValueError("a forced promotion needs a person (--who or $USER)")
    client = client or connect(require_store())  # never a new empty store in the cwd
    missing = model_not_found(client, name)
    if missing:
        raise PromotionError(missing)
    version = str(version)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    with registry_errors(f"force-promoting {name} version {version}"):
        before = alias_version(client, name, CHAMPION)
        found = wait_until_ready(client, name, version)
        checksum = verify_version(client, name, version)
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
        metrics={k: v for k, v in metrics_from_tags(tags).items() if is_number(v)},
        decided_at=stamp,
        promotion={"policy": "forced", "allowed": True, "why": f"vigil promote by {who}"},
    )
    path = None
    if decision_dir is not None:
        safe = stamp.replace(":", "").replace("+", "Z")
        path = Path(decision_dir) / f"{name}-v{version}-{safe}.json"
        write_decision(decision, path)  # the record first: if this fails, nothing moved
    try:
        with registry_errors(f"force-promoting {name} version {version}"):
            client.set_model_version_tag(name, version, TAG_FORCED_BY, who)
            client.set_model_version_tag(name, version, TAG_FORCE_REASON, why[:MAX_TAG_VALUE])
            client.set_model_version_tag(name, version, TAG_FORCED_AT, stamp)
            vouch(client, name, version, "forced")
            _promote(client, name, version, before)
    except PromotionError as error:
        if path is not None:
            write_decision(rolled_back(decision, error), path)
        raise
    return decision
