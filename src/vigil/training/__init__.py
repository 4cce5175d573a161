"""vigil.training: ``fit()`` trains one model, logs one MLflow run, writes the trained files."""

from vigil.training.fit import FitResult, fit

__all__ = ["FitResult", "fit"]
