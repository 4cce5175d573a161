"""The promotion policy: who may move champion (pure rule + the git state it reads)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.registry.registry_helpers import commit_all
from vigil.registry.policy import RunContext, changed_inputs, decide, promotion_policy

CLEAN = RunContext(env={}, cwd=Path("/srv/vigil"), changed=(), commit="a" * 40)


@pytest.mark.parametrize(
    ("policy", "context", "allowed", "why"),
    [
        ("auto", CLEAN, True, "a clean commit (aaaaaaaaaaaa)"),
        ("auto", RunContext(env={"DVC_EXP_NAME": "blur5", "DVC_EXP_BASELINE_REV": "ab"},
                            changed=()), False, "a DVC experiment 'blur5'"),
        ("auto", RunContext(env={"DVC_EXP_BASELINE_REV": "ab"}, changed=()), False,
         "a DVC experiment (dvc exp run)"),
        # --temp / --queue runs execute under .dvc/tmp/exps/
        ("auto", RunContext(cwd=Path("/srv/vigil/.dvc/tmp/exps/tmp1a2b"), changed=()), False,
         "a DVC experiment"),
        # an experiment does not promote even when the retrain flag leaks into its environment
        ("auto", RunContext(env={"DVC_EXP_NAME": "x", "VIGIL_PROMOTE": "1"}, changed=()), False,
         "DVC experiment"),
        ("auto", RunContext(changed=("params.yaml", "src/vigil/x.py")), False,
         "uncommitted changes to pipeline inputs (params.yaml, src/vigil/x.py)"),
        ("auto", RunContext(changed=tuple(f"f{i}" for i in range(7))), False, "and 2 more"),
        ("auto", RunContext(changed=None), False, "not a git checkout"),
        # the scheduled retrain runs dvc repro on a tree it just changed (new data versions)
        ("auto", RunContext(env={"VIGIL_PROMOTE": "1"}, changed=("data/extra/c.dvc",)), True,
         "VIGIL_PROMOTE=1"),
        ("auto", RunContext(env={"VIGIL_PROMOTE": "0"}, changed=()), False, "VIGIL_PROMOTE=0"),
        ("always", RunContext(env={"DVC_EXP_NAME": "x"}, changed=None), True, "always"),
        ("never", CLEAN, False, "candidates only become challenger"),
    ],
)
def test_decide(policy, context, allowed, why):
    verdict = decide(policy, context)
    assert verdict.allowed is allowed and verdict.policy == policy
    assert why in verdict.why, verdict.why


def test_decide_records_the_experiment_name():
    verdict = decide("auto", RunContext(env={"DVC_EXP_NAME": "blur5"}))
    assert verdict.to_dict()["experiment"] == "blur5"
    assert decide("auto", CLEAN).experiment is None


def test_unknown_policy_is_an_error():
    with pytest.raises(ValueError, match="register.promote must be one of auto, always, never"):
        decide("sometimes", CLEAN)


def test_changed_inputs_reads_git(tmp_path):
    assert changed_inputs(tmp_path) is None  # not a git checkout
    (tmp_path / "params.yaml").write_text("a: 1\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "m.py").write_text("x = 1\n")
    (tmp_path / "dvc.lock").write_text("lock\n")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "metrics.json").write_text("{}\n")
    commit_all(tmp_path)
    assert changed_inputs(tmp_path) == ()
    assert promotion_policy("auto", tmp_path, env={}).allowed
    # pipeline outputs changing (dvc.lock, reports) is what a run does: still clean
    (tmp_path / "dvc.lock").write_text("lock 2\n")
    (tmp_path / "reports" / "metrics.json").write_text('{"auroc": 1}\n')
    assert changed_inputs(tmp_path) == ()
    # inputs: a modified param, an untracked module, a data version
    (tmp_path / "params.yaml").write_text("a: 2\n")
    (tmp_path / "src" / "new.py").write_text("y = 2\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "extra.dvc").write_text("outs: []\n")
    assert sorted(changed_inputs(tmp_path)) == ["data/extra.dvc", "params.yaml", "src/new.py"]
    verdict = promotion_policy("auto", tmp_path, env={})
    assert not verdict.allowed and "params.yaml" in verdict.why
