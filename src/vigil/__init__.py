"""vigil: unsupervised visual anomaly detection with its whole MLOps lifecycle."""

__version__ = "0.1.0"
