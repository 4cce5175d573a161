"""The decision record of one candidate (``reports/<D>/decision.json``, ``reports/promotions/``).

The record is written before the ``champion`` alias moves; when a later step fails, it is
rewritten as ``state: "failed"`` with ``promoted: false`` (``rolled_back``), so the file never
claims a promotion the registry does not show.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vigil.atomic import atomic_write_json


@dataclass(frozen=True)
class Decision:
    """What happened to one candidate: the decision file's content.

    ``passed``: the gate's verdict; ``promoted``: whether ``champion`` moved to this version (a
    pass is not promoted when the promotion policy forbids it: ``promotion`` says why);
    ``criteria``: the gate's rules in plain words; ``state``: ``recorded`` (complete),
    ``failed`` (a registry step after the record failed; nothing was promoted).
    """

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
    criteria: list[str] = field(default_factory=list)
    promotion: dict[str, Any] = field(default_factory=dict)  # PolicyVerdict.to_dict()
    state: str = "recorded"
    notes: list[str] = field(default_factory=list)  # e.g. orphans repaired by this run

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One plain line: the verdict a person reads first."""
        if self.state == "failed":
            return (
                f"NOT COMPLETED: {self.model_name} version {self.version}; champion stays "
                f"{self.champion_before or '(none)'} ({self.reasons[-1] if self.reasons else ''})"
            )
        if self.forced:
            head = f"FORCED: {self.model_name} version {self.version} is champion"
            return f"{head} (by {self.who}: {self.why}; was {self.champion_before})"
        verdict = "PASSED" if self.passed else "REJECTED"
        if self.promoted:
            where = f"version {self.version} is now champion"
        elif self.passed and self.promotion and not self.promotion.get("allowed", True):
            where = (
                f"not promoted ({self.promotion.get('why', 'promotion not allowed')}): "
                f"version {self.version} is challenger, champion stays "
                f"{self.champion_before or '(none)'}"
            )
        else:
            where = f"champion stays {self.champion_before or '(none)'}"
        return f"gate {verdict}: {self.model_name} version {self.version}; {where}"


def write_decision(decision: Decision, path: Path | str) -> Path:
    """Write the decision JSON atomically (temp file in the same folder, then rename)."""
    return atomic_write_json(path, decision.to_dict(), indent=2)


def rolled_back(decision: Decision, error: BaseException | str) -> Decision:
    """``decision`` after a failed registry step: nothing promoted, the failure in the reasons."""
    return replace(
        decision,
        promoted=False,
        champion_after=decision.champion_before,
        state="failed",
        reasons=[*decision.reasons, f"not completed, champion unchanged: {error}"],
    )
