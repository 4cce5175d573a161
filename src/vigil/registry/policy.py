"""Who may move ``champion``: the promotion policy (``register.promote``).

Every pipeline run registers and gates its candidate and sets ``challenger``; only a run that is
allowed to promote moves ``champion``, so exploration never changes what the line serves.

- ``never``: no pipeline run promotes (a person does, with ``vigil promote --force``).
- ``always``: a gate pass promotes, wherever the run comes from.
- ``auto`` (default), in this order:
  1. inside a DVC experiment (``dvc exp run``, also ``--queue``/``--temp``): not allowed. DVC
     sets ``DVC_EXP_BASELINE_REV`` and ``DVC_EXP_NAME`` in the environment of an experiment's
     stages (documented in DVC's environment-variable reference); temporary and queued runs also
     execute under ``.dvc/tmp/exps/``.
  2. ``VIGIL_PROMOTE=1`` (set by ``vigil retrain`` for its ``dvc repro``): allowed;
     ``VIGIL_PROMOTE=0``: not allowed.
  3. not a git checkout: not allowed (the model's code and params cannot be named).
  4. uncommitted changes to the pipeline's inputs (``INPUT_PATHSPECS``: params, dvc.yaml, code,
     configs, ``*.dvc`` data versions; outputs such as ``dvc.lock`` and reports do not count):
     not allowed.
  5. a clean commit: allowed.

``decide`` is the pure rule over a ``RunContext``; ``run_context`` reads the environment and git.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PROMOTE_ENV = "VIGIL_PROMOTE"
EXPERIMENT_ENV = ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV")
EXPERIMENT_DIR = (".dvc", "tmp", "exps")
POLICIES = ("auto", "always", "never")
#: What makes a different model when it changes (git pathspecs, relative to the project root).
INPUT_PATHSPECS = (
    "params.yaml",
    "dvc.yaml",
    "pyproject.toml",
    "src",
    "pipelines",
    "configs",
    ":(glob)**/*.dvc",
)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class RunContext:
    """Where a register run happens: its environment, folder and git state."""

    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path = Path(".")
    changed: tuple[str, ...] | None = ()  # changed pipeline inputs; None: not a git checkout
    commit: str | None = None


@dataclass(frozen=True)
class PolicyVerdict:
    """Whether this run may move ``champion``, and why, in plain words."""

    policy: str
    allowed: bool
    why: str
    experiment: str | None = None  # the DVC experiment's name when inside one

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def experiment_name(context: RunContext) -> str | None:
    """The DVC experiment this run belongs to ("" when unnamed), or None outside one."""
    name = context.env.get("DVC_EXP_NAME")
    if name or context.env.get("DVC_EXP_BASELINE_REV"):
        return name or ""
    parts = Path(context.cwd).resolve().parts
    n = len(EXPERIMENT_DIR)
    if any(tuple(parts[i : i + n]) == EXPERIMENT_DIR for i in range(len(parts) - n + 1)):
        return ""
    return None


def decide(policy: str, context: RunContext) -> PolicyVerdict:
    """The promotion rule (module docstring) for ``policy`` in ``context``; pure."""
    if policy not in POLICIES:
        raise ValueError(f"register.promote must be one of {', '.join(POLICIES)}, got {policy!r}")
    experiment = experiment_name(context)
    if policy == "never":
        return PolicyVerdict(
            policy, False, "register.promote is never: candidates only become challenger",
            experiment,
        )
    if policy == "always":
        return PolicyVerdict(policy, True, "register.promote is always", experiment)
    if experiment is not None:
        label = f" {experiment!r}" if experiment else ""
        return PolicyVerdict(
            policy,
            False,
            f"a DVC experiment{label} (dvc exp run) does not move champion; commit the change "
            "and run dvc repro, or promote with vigil promote --force",
            experiment,
        )
    flag = context.env.get(PROMOTE_ENV, "").strip().lower()
    if flag in _TRUE:
        return PolicyVerdict(policy, True, f"{PROMOTE_ENV}={flag} (scheduled retraining)")
    if flag in _FALSE:
        return PolicyVerdict(policy, False, f"{PROMOTE_ENV}={flag}")
    if context.changed is None:
        return PolicyVerdict(
            policy, False, "not a git checkout: the model's code and params cannot be named"
        )
    if context.changed:
        shown = ", ".join(context.changed[:5])
        more = f" and {len(context.changed) - 5} more" if len(context.changed) > 5 else ""
        return PolicyVerdict(
            policy,
            False,
            f"uncommitted changes to pipeline inputs ({shown}{more}): commit them and rerun to "
            "promote",
        )
    commit = (context.commit or "")[:12]
    return PolicyVerdict(policy, True, f"a clean commit{f' ({commit})' if commit else ''}")


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def changed_inputs(root: Path) -> tuple[str, ...] | None:
    """Pipeline inputs under ``root`` that differ from HEAD (modified, staged or untracked and not
    ignored); None when ``root`` is not a git checkout with a commit."""
    head = _git(["rev-parse", "--verify", "-q", "HEAD"], root)
    if head is None or head.returncode != 0:
        return None
    status = _git(
        ["status", "--porcelain=v1", "-z", "--untracked-files=all", "--", *INPUT_PATHSPECS], root
    )
    if status is None or status.returncode != 0:
        return None
    entries = [e for e in status.stdout.split("\0") if e]
    paths, skip = [], False
    for entry in entries:
        if skip:  # the source path of a rename/copy entry
            skip = False
            continue
        code, path = entry[:2], entry[3:]
        skip = "R" in code or "C" in code
        paths.append(path)
    return tuple(paths)


def run_context(root: Path | str | None = None, env: Mapping[str, str] | None = None) -> RunContext:
    """The context of the current process: its environment, ``root`` (default: cwd) and git."""
    root = Path(root) if root is not None else Path.cwd()
    head = _git(["rev-parse", "HEAD"], root)
    commit = head.stdout.strip() if head is not None and head.returncode == 0 else None
    return RunContext(
        env=dict(os.environ if env is None else env),
        cwd=root,
        changed=changed_inputs(root),
        commit=commit,
    )


def promotion_policy(
    policy: str, root: Path | str | None = None, env: Mapping[str, str] | None = None
) -> PolicyVerdict:
    """``decide(policy, run_context(root, env))``."""
    return decide(policy, run_context(root, env))
