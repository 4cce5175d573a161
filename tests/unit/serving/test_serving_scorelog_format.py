"""The score log serving writes and the drift trigger reads: one format, whole lines under
concurrent writers (threads of one process and separate processes)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from vigil.scheduling import DriftConfig
from vigil.scheduling.drift import check_drift, read_scores
from vigil.serving.scorelog import FIELDS, ScoreLog

WRITER = """
import sys
from vigil.serving.scorelog import ScoreLog
with ScoreLog(sys.argv[1]) as log:
    for i in range(int(sys.argv[2])):
        log.write("m", sys.argv[3], [(0.001 * i, False)], 0.5)
"""


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_lines_have_exactly_the_fields_and_drift_reads_them(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "scores.jsonl"  # the folder is created
    with ScoreLog(path) as log:
        assert log.write("cae", "3", [(0.9, True), (0.1, False)], 0.5) == 2
        assert log.write("cae", "3", [(math.nan, False), (math.inf, True)], 0.5) == 0  # unscored
    rows = _lines(path)
    assert [tuple(row) for row in rows] == [FIELDS, FIELDS]
    assert rows[0]["model_name"] == "cae" and rows[0]["model_version"] == "3"
    assert (rows[0]["score"], rows[0]["threshold"], rows[0]["is_anomaly"]) == (0.9, 0.5, True)
    assert rows[0]["time"].endswith("Z")
    scores, thresholds = read_scores(path)
    assert scores.tolist() == [0.9, 0.1] and thresholds.tolist() == [0.5, 0.5]
    cfg = DriftConfig(scores_log="logs/scores.jsonl", window=2, min_samples=2)
    result = check_drift(cfg.model_copy(update={"max_alarm_fraction": 0.4}), tmp_path)
    assert result.fired and result.alarm_fraction == 0.5 and result.n_recent == 2


def test_appends_stay_whole_under_threads_and_processes(tmp_path: Path) -> None:
    path = tmp_path / "scores.jsonl"
    log = ScoreLog(path)
    others = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), "300", f"p{i}"])
        for i in range(2)
    ]

    def burst(version: str) -> None:
        for i in range(200):
            log.write("m", version, [(0.01 * i, False), (0.02 * i, True)], 0.5)

    threads = [threading.Thread(target=burst, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [p.wait(60) for p in others] == [0, 0]
    log.close()
    rows = _lines(path)  # every line parses: no torn or interleaved writes
    counts = {v: sum(r["model_version"] == v for r in rows) for v in ("t0", "t1", "t2", "t3")}
    assert counts == {"t0": 400, "t1": 400, "t2": 400, "t3": 400}
    assert sum(r["model_version"] in ("p0", "p1") for r in rows) == 600
    assert read_scores(path)[0].size == len(rows) == 2200
    scores = [r["score"] for r in rows if r["model_version"] == "p0"]
    assert np.all(np.diff(scores) > 0)  # one process's lines stay in its order


def test_an_unwritable_path_is_an_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match="score log .*file/scores.jsonl: cannot open"):
        ScoreLog(blocker / "scores.jsonl")
