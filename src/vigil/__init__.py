"""vigil: unsupervised visual anomaly detection with its whole MLOps lifecycle.

Importing ``vigil`` sets OpenMP defaults (``OMP_WAIT_POLICY=PASSIVE``, ``OMP_NUM_THREADS``)
before any submodule loads torch: without them torch's spin-waiting threads make each step
many times slower on a busy machine. The one import-time side effect; see ``vigil.threads``.
"""

from vigil.threads import apply_process_defaults

apply_process_defaults()

__version__ = "0.1.0"
