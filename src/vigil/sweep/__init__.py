"""vigil.sweep: Optuna study over the encoding size, maximizing the tune-split
anomaly-to-total error ratio.

- ``space``: the search space file (``configs/search_space.yaml``), strictly validated.
- ``objective``: tune-split errors and the ratio, with the normal-error cap.
- ``pruning``: our Lightning pruning callback.
- ``study``: ``run_sweep`` / ``run_stage`` (storage, workers, MLflow parent + child runs).
- ``plots``: the error-vs-encoding-size figure and its DVC plot data.
"""
