"""The console's models panel: what each served model is and why it is serving.

For the loaded model (``ModelHolder.current``; a list, ready for a server holding several) this
joins what the scorer carries (``ModelInfo``: name, version, alias, threshold, metrics from the
pulled manifest) with what the registry records on the version: the gate's verdict and reasons
(``vigil.gate.passed``, ``vigil.gate.reasons``), a forced promotion (``vigil.forced_by``,
``vigil.force_reason``, ``vigil.forced_at``), the metrics the gate saw (``vigil.metric.*``) and
the version's aliases. Registry answers are cached for ``ttl_s``; when the registry cannot be
reached the panel still shows the loaded model and names the error.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

from vigil.serving.follow import ModelHolder
from vigil.serving.loader import ModelInfo

#: Metrics shown for the operating point (the calibrated threshold), in this order.
OPERATING_POINT = (
    "target_precision",
    "precision_at_threshold",
    "recall_at_threshold",
    "recall_at_precision",
    "false_alarm_rate",
    "escape_rate",
    "image_auroc",
    "frame_auroc",
    "pixel_auroc",
    "aupro",
    "average_precision",
)
GATE_REJECTED_SHOWN = 5


def _iso(millis: int | None) -> str | None:
    if not millis:
        return None
    return datetime.fromtimestamp(millis / 1000.0, UTC).isoformat(timespec="seconds")


def _reasons(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(";") if part.strip()]


def promotion(tags: dict[str, str], registered_at: str | None) -> dict[str, Any]:
    """How the version became what it is: ``{"by": "forced" | "gate" | "none", ...}``."""
    from vigil.registry.promotion import (
        TAG_FORCE_REASON,
        TAG_FORCED_AT,
        TAG_FORCED_BY,
        TAG_GATE_PASSED,
    )

    if tags.get(TAG_FORCED_BY):
        return {
            "by": "forced",
            "who": tags[TAG_FORCED_BY],
            "reason": tags.get(TAG_FORCE_REASON),
            "at": tags.get(TAG_FORCED_AT),
        }
    if tags.get(TAG_GATE_PASSED) == "true":  # the register stage moves the alias on a pass
        return {"by": "gate", "who": None, "reason": None, "at": registered_at}
    return {"by": "none", "who": None, "reason": None, "at": None}


class RegistryView:
    """Version tags, aliases and gate-rejected versions from the registry, cached ``ttl_s``."""

    def __init__(self, ttl_s: float = 15.0) -> None:
        self.ttl_s = ttl_s
        self._cache: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def details(self, name: str, version: str) -> dict[str, Any]:
        """``{"tags", "aliases", "registered_at", "rejected", "error"}`` for one version."""
        key = (name, version)
        with self._lock:
            cached = self._cache.get(key)
        if cached and time.monotonic() - cached[0] < self.ttl_s:
            return cached[1]
        found = self._fetch(name, version)
        with self._lock:
            self._cache[key] = (time.monotonic(), found)
        return found

    @staticmethod
    def _fetch(name: str, version: str) -> dict[str, Any]:
        from vigil.registry.promotion import TAG_GATE_PASSED, TAG_GATE_REASONS
        from vigil.tracking import connect

        empty: dict[str, Any] = {"tags": {}, "aliases": [], "registered_at": None, "rejected": []}
        try:
            client = connect()
            found = client.get_model_version(name, version)
            others = client.search_model_versions(f"name='{name}'")
        except Exception as error:  # noqa: BLE001 - the panel shows the loaded model anyway
            return {**empty, "error": f"registry: {type(error).__name__}: {error}"[:500]}
        rejected = sorted(
            (v for v in others if (v.tags or {}).get(TAG_GATE_PASSED) == "false"),
            key=lambda v: int(v.version),
            reverse=True,
        )[:GATE_REJECTED_SHOWN]
        return {
            "tags": dict(found.tags or {}),
            "aliases": list(found.aliases or []),
            "registered_at": _iso(found.creation_timestamp),
            "rejected": [
                {
                    "version": str(v.version),
                    "reasons": _reasons((v.tags or {}).get(TAG_GATE_REASONS)),
                    "registered_at": _iso(v.creation_timestamp),
                }
                for v in rejected
            ],
            "error": None,
        }


def describe(info: ModelInfo, refused: dict[str, str] | None, registry: RegistryView) -> dict:
    """One model's panel entry (JSON-ready)."""
    from vigil.registry.promotion import TAG_GATE_PASSED, TAG_GATE_REASONS, metrics_from_tags

    local = info.version == "local"  # a package folder loaded without the registry
    details = (
        {"tags": {}, "aliases": [], "registered_at": None, "rejected": [], "error": None}
        if local
        else registry.details(info.name, info.version)
    )
    tags = details["tags"]
    metrics = {**info.metrics, **metrics_from_tags(tags)}
    passed = tags.get(TAG_GATE_PASSED)
    return {
        "name": info.name,
        "version": info.version,
        "alias": info.alias,
        "aliases": details["aliases"],
        "modality": info.modality,
        "input_size": list(info.input_size),
        "channels": info.channels,
        "fps": info.fps,
        "threshold": info.threshold,
        "gate": {
            "passed": None if passed is None else passed == "true",
            "reasons": _reasons(tags.get(TAG_GATE_REASONS)),
        },
        "metrics": {
            key: metrics[key]
            for key in OPERATING_POINT
            if isinstance(metrics.get(key), (int, float))
        },
        "promotion": promotion(tags, details["registered_at"]),
        "registered_at": details["registered_at"],
        "refused_versions": [
            {"version": v, "reason": reason} for v, reason in sorted((refused or {}).items())
        ],
        "gate_rejected_versions": details["rejected"],
        "registry_error": details.get("error"),
        "local": local,
    }


def model_entries(
    holder: ModelHolder, registry: RegistryView, holders: list[ModelHolder] | None = None
) -> list[dict[str, Any]]:
    """Every served model's entry: ``holders`` (a box serving several), else ``holder``'s."""
    return [describe(h.current.info, h.registry.refused, registry) for h in holders or [holder]]
