"""Lineage logging under concurrency: sweep workers in several processes log one dataset."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from vigil.data.prepared import PreparedDataset
from vigil.training import tracking


class _LosesTheRaceOnce:
    """A real client whose first ``log_inputs`` fails as the store fails when another process
    inserted the same dataset row between the store's lookup and its insert."""

    def __init__(self, client: mlflow.MlflowClient, message: str) -> None:
        self.client, self.message, self.calls = client, message, 0

    def log_inputs(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 1:
            raise MlflowException(self.message)
        return self.client.log_inputs(*args, **kwargs)


@pytest.mark.parametrize(
    "message",
    [
        "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, ...",
        "(psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint",
    ],
)
def test_dataset_logged_by_another_worker_first_is_linked_on_retry(
    mlflow_store, image_dataset, message
):
    data = PreparedDataset.load(image_dataset)
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("race")
    other, mine = (client.create_run(experiment).info.run_id for _ in range(2))
    tracking.log_dataset(client, other, data)  # the other worker wins the insert

    racing = _LosesTheRaceOnce(client, message)
    tracking.log_dataset(racing, mine, data)

    assert racing.calls == 2
    inputs = client.get_run(mine).inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == [f"prepared-{data.name}"]


def test_other_registry_errors_are_not_retried(mlflow_store, image_dataset):
    data = PreparedDataset.load(image_dataset)
    client = mlflow.MlflowClient()
    run = client.create_run(client.create_experiment("broken")).info.run_id
    racing = _LosesTheRaceOnce(client, "database is locked")
    with pytest.raises(MlflowException, match="database is locked"):
        tracking.log_dataset(racing, run, data)
    assert racing.calls == 1
