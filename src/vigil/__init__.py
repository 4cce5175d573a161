"""vigil: unsupervised visual anomaly detection with its whole MLOps lifecycle.

Importing ``vigil`` sets OpenMP defaults (a short ``GOMP_SPINCOUNT``, ``OMP_NUM_THREADS``)
before any submodule loads torch: torch's long default spin-waiting makes each step many times
slower on a busy machine, no spinning at all each small op slower (see ``vigil.threads``). It also turns MLflow's pickle
deserialization off unless the user set it (MLflow 3.17 allows it by default; vigil's packages
are models from code with safetensors weights and never need it), and MLflow's artifact progress
bars when stderr is not a terminal (stage logs, services, pipes: tqdm's carriage returns are noise).
"""

import os
import sys

from vigil.threads import apply_process_defaults

apply_process_defaults()
os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
if not (sys.stderr is not None and sys.stderr.isatty()):  # logs, pipes, services: no tqdm bars
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

__version__ = "0.1.0"
