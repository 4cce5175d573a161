"""MLflow names, in one place: experiment names, run tags, registered-model version tags and
metric keys. Everything vigil writes to or reads from MLflow is spelled here.

Run tags describe runs (training, sweep, retrain); version tags carry what the gate, the
promotion policy and the loaders need about a registered model version.
"""

from __future__ import annotations

# --- experiments and registered models ---------------------------------------------------------

RETRAIN_EXPERIMENT = "vigil-retrain"  # one run per retraining cycle


def experiment_name(dataset: str) -> str:
    """The experiment of a dataset: sweep parent and trial runs, the training run."""
    return f"vigil-{dataset}"


def model_name(prefix: str, dataset: str, modality: str) -> str:
    """The registered model of a dataset: ``<register.model_name_prefix>-<dataset>-<modality>``."""
    return f"{prefix}-{dataset}-{modality}"


# --- run tags -------------------------------------------------------------------------------------

PARENT_RUN = "mlflow.parentRunId"
EXPERIMENT_KIND = "mlflow.experimentKind"
GIT_COMMIT = "vigil.git_commit"
DATA_HASH = "vigil.data_hash"
DATASET = "vigil.dataset"
MODALITY = "vigil.modality"
STAGE = "vigil.stage"  # train | sweep | sweep-trial | retrain
RESUMED_FROM = "vigil.resumed_from"
ENCODING_SHAPE = "vigil.encoding_shape"
ERROR = "vigil.error"
REPORT = "vigil.report"  # artifact path of the evaluation report on the training run
TEST_SPLIT_HASH = "vigil.test_split_hash"
STUDY = "vigil.study"
N_TRIALS = "vigil.n_trials"
TRIAL = "vigil.trial"
FEASIBLE = "vigil.feasible"
BEST_TRIAL = "vigil.best_trial"
BEST_RUN_ID = "vigil.best_run_id"
BEST_FEASIBLE = "vigil.best_feasible"
CYCLE_ID = "vigil.cycle_id"

# --- version tags -------------------------------------------------------------------------------

METRIC_PREFIX = "vigil.metric."  # + metric key: the gate's view of the candidate's metrics
THRESHOLD = "vigil.threshold"
WEIGHTS_SHA256 = "vigil.weights_sha256"
PACKAGE_SHA256 = "vigil.package_sha256"
SIGNATURE = "vigil.signature"
PROMOTION_BASIS = "vigil.promotion_basis"  # gate | forced: why this version may serve
GATE_PASSED = "vigil.gate.passed"
GATE_REASONS = "vigil.gate.reasons"
GATE_CRITERIA = "vigil.gate.criteria"
GATE_SETTINGS = "vigil.gate.settings"
GATE_SETTINGS_HASH = "vigil.gate.settings_hash"
DECISION_STATE = "vigil.decision.state"  # pending | recorded | failed | orphaned
PROMOTION_ALLOWED = "vigil.promotion.allowed"
PROMOTION_POLICY = "vigil.promotion.policy"
PROMOTION_WHY = "vigil.promotion.why"
DVC_EXPERIMENT = "vigil.dvc_experiment"
FORCED_BY = "vigil.forced_by"
FORCE_REASON = "vigil.force_reason"
FORCED_AT = "vigil.forced_at"

# --- metric keys --------------------------------------------------------------------------------

TEST_METRIC_PREFIX = "test_"  # evaluation metrics on the training run: test_image_auroc, ...
