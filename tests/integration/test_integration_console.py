"""The operator console in a real headless Chromium (Debian's ``chromium`` driven by Playwright;
no browser is ever downloaded) against a real ``vigil serve`` subprocess that serves a tiny model
from a real MLflow registry, with an API token and a score log.

Screenshots of each panel land in the module's tmp folder (the paths are printed). With
``VIGIL_CONSOLE_SCREENSHOT=1`` the full page is also copied to ``docs/console.png`` (the README's
picture): run this file once by hand for that, CI never writes into the repository.
"""

from __future__ import annotations

import base64
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import yaml

from tests.conftest import _forget_active_experiment, free_port, wait_until_ok
from tests.unit.serving.conftest import make_model_dir, png, register

REPO = Path(__file__).resolve().parents[2]
SERVING_MAIN = "import sys; from vigil.cli import main; sys.exit(main())"
CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
TOKEN = "console-test-token"
MODEL = "tiny-console-image"
INPUT_W, INPUT_H = 120, 90  # not the model's 32x32, and not square


@dataclass(frozen=True)
class Served:
    url: str
    tmp: Path
    score_log: Path
    screens: Path


def _defect_image() -> np.ndarray:
    """A dark textured part with one bright scratch: BGR uint8 (INPUT_H, INPUT_W, 3)."""
    rng = np.random.default_rng(3)
    image = rng.integers(20, 60, (INPUT_H, INPUT_W, 3), dtype=np.uint8)
    cv2.line(image, (20, 20), (95, 70), (240, 240, 250), 6)
    return image


def _history(log_path: Path, threshold: float) -> None:
    """A minute of line history: calm, one alarm, calm (what `vigil watch` would have logged)."""
    from vigil.serving.scorelog import ScoreLog

    rng = np.random.default_rng(0)
    scores = [float(s) for s in rng.uniform(0.3, 0.7, 90) * threshold]
    scores[50:62] = [float(s) for s in rng.uniform(1.2, 1.6, 12) * threshold]
    with ScoreLog(log_path) as log:
        log.write(MODEL, "1", [(s, s >= threshold) for s in scores], threshold)


def _retrain_project(root: Path) -> None:
    """configs/retrain.yaml and one cycle record written by the scheduler's own writer."""
    from vigil.scheduling import load_retrain_config
    from vigil.scheduling.retrain import Cycle, write_record

    (root / "configs").mkdir(parents=True)
    (root / "configs" / "retrain.yaml").write_text("datasets:\n  tiny:\n    inbox: inbox/tiny\n")
    cfg = load_retrain_config(root / "configs" / "retrain.yaml")
    record = Cycle(root, cfg, print).record
    record.update(status="retrained", finished=record["started"], trigger=["new_data"])
    record["datasets"]["tiny"] = {
        "trigger": ["new_data"], "data_version_before": "3f2a9c01d4e5",
        "data_version_after": "9b7e11aa0c42", "ingested": 20, "candidate_version": "2",
        "verdict": "fail", "promoted": False, "champion_before": "1", "champion_after": "1",
    }
    record["durations_s"]["total"] = 51.4
    write_record(root, cfg, record)


@pytest.fixture(scope="module")
def served(_mlflow_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`vigil serve` (token, score log, console root) over a registry with MODEL v1 champion."""
    import mlflow

    tmp = tmp_path_factory.mktemp("console")
    with pytest.MonkeyPatch.context() as patch:
        db = tmp / "mlflow.db"
        shutil.copy(_mlflow_template, db)
        with sqlite3.connect(db) as conn:
            conn.execute(
                "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                ((tmp / "mlruns" / "0").as_uri(),),
            )
        uri = f"sqlite:///{db}"
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.chdir(tmp)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        version = register(MODEL, make_model_dir(tmp / "train", "image", threshold=0.05))
        client = mlflow.MlflowClient()
        for key, value in {
            "vigil.gate.passed": "true",
            "vigil.gate.reasons": "precision 1.000 >= 0.9: ok; recall 0.952 >= 0.8: ok",
            "vigil.metric.precision_at_threshold": "1.0",
            "vigil.metric.recall_at_threshold": "0.952",
            "vigil.metric.image_auroc": "0.998",
        }.items():
            client.set_model_version_tag(MODEL, version, key, value)
        _forget_active_experiment()
        _retrain_project(tmp / "project")
        score_log = tmp / "scores.jsonl"
        _history(score_log, 0.05)
        config = tmp / "serving.yaml"
        config.write_text(yaml.safe_dump({"console": {"root": str(tmp / "project")}}))
        port = free_port()
        env = {**os.environ, "VIGIL_API_TOKEN": TOKEN, "OMP_WAIT_POLICY": "PASSIVE"}
        out = tmp / "serve.log"
        with out.open("w") as handle:
            process = subprocess.Popen(
                [sys.executable, "-c", SERVING_MAIN, "serve", "--model-uri",
                 f"models:/{MODEL}@champion", "--port", str(port), "--config", str(config),
                 "--score-log", str(score_log)],
                cwd=tmp, env=env, stdout=handle, stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_ok(f"{url}/health", process, out.read_text)
            screens = tmp / "screens"
            screens.mkdir()
            yield Served(url, tmp, score_log, screens)
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            _forget_active_experiment()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Debian chromium through Playwright; skipped (with the reason) when absent."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install -e '.[dev]'")
    if not CHROMIUM.exists():
        pytest.skip(f"no browser at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        yield launched
        launched.close()


@pytest.fixture()
def contexts(browser) -> Iterator[list]:
    """Browser contexts opened by a test, closed after it (so no live stream outlasts it)."""
    opened: list = []
    yield opened
    for context in opened:
        context.close()


def _page(contexts: list, browser, served: Served, *, signed_in: bool):
    """A fresh tab (its own sessionStorage) on /console, signed in when asked."""
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    contexts.append(context)
    page = context.new_page()
    page.goto(f"{served.url}/console")
    page.wait_for_selector("body[data-ready=true]", timeout=15000)
    if signed_in:
        page.fill("#token", TOKEN)
        page.click("#login button")
        page.wait_for_function(
            "document.getElementById('auth-state').textContent === 'signed in'", timeout=5000
        )
    return page


def _shot(page, served: Served, selector: str, name: str) -> Path:
    path = served.screens / f"{name}.png"
    page.locator(selector).screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path


def _drop(page, name: str, data: bytes) -> None:
    """Drop a file on the drop zone as a browser does: a DataTransfer in a real drop event."""
    page.evaluate(
        """([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: "image/png" }));
            document.getElementById("dropzone").dispatchEvent(
                new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
        }""",
        [name, base64.b64encode(data).decode()],
    )


def test_models_panel_shows_the_champion_and_its_gate_verdict(
    browser, served: Served, contexts
) -> None:
    page = _page(contexts, browser, served, signed_in=False)
    page.wait_for_selector("[data-testid=model-version]")
    assert page.inner_text("[data-testid=model-version]") == "version 1"
    assert page.inner_text("[data-testid=gate-verdict]") == "gate PASSED"
    text = page.inner_text("#models-panel")
    assert MODEL in text and "champion" in text and "recall 0.952 >= 0.8: ok" in text
    assert "by the gate" in page.inner_text("[data-testid=promotion]")
    _shot(page, served, "#models-panel", "models")


def test_dropping_a_defect_image_shows_an_overlay_at_its_size_and_the_api_verdict(
    browser, served: Served, contexts
) -> None:
    page = _page(contexts, browser, served, signed_in=True)
    data = png(_defect_image())
    _drop(page, "defect.png", data)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.input-img, .overlay-img')]"
        ".filter((i) => i.complete && i.naturalWidth > 0).length === 2",
        timeout=15000,
    )
    sizes = page.evaluate(
        "() => [...document.querySelectorAll('.input-img, .overlay-img')]"
        ".map((i) => [i.naturalWidth, i.naturalHeight])"
    )
    answer = httpx.post(
        f"{served.url}/score",
        content=data,
        headers={"content-type": "image/png", "Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    ).json()
    verdict = page.inner_text("[data-testid=verdict]")
    assert verdict == ("ANOMALY" if answer["is_anomaly"] else "normal")
    shown = float(page.inner_text("[data-testid=score]").split()[1])
    assert shown == pytest.approx(answer["score"], rel=1e-3)
    assert page.get_attribute("[data-testid=download]", "download") == "defect-overlay.png"
    _shot(page, served, "#score-panel", "score")
    assert sizes == [[INPUT_W, INPUT_H], [INPUT_W, INPUT_H]], (
        f"overlay {sizes[1]} is not at the input's resolution {sizes[0]}"
    )


def test_live_panel_receives_a_scored_frame_within_two_seconds(
    browser, served: Served, contexts
) -> None:
    from vigil.serving.scorelog import ScoreLog, score_line

    page = _page(contexts, browser, served, signed_in=True)
    frame = _defect_image()
    heatmap = httpx.post(  # the service's own overlay (its request is logged: one more point)
        f"{served.url}/score/heatmap",
        content=png(frame),
        headers={"content-type": "image/png", "Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    overlay = cv2.imdecode(np.frombuffer(heatmap.content, np.uint8), cv2.IMREAD_COLOR)
    before = len(served.score_log.read_text().splitlines())
    page.wait_for_function(
        f"Number(document.getElementById('timeline').dataset.points) === {before}", timeout=5000
    )
    with ScoreLog(served.score_log, latest_every_s=0) as log:  # as `vigil watch` writes it
        written = time.monotonic()
        log.write(MODEL, "1", [(0.08, True)], 0.05)
        log.write_latest(frame, overlay, score_line(MODEL, "1", 0.08, 0.05, True))
    page.wait_for_function(
        f"Number(document.getElementById('timeline').dataset.points) === {before + 1}",
        timeout=2000,
    )
    assert time.monotonic() - written < 2.0
    page.wait_for_selector("#live-frame:not([hidden])", timeout=5000)
    assert "score 0.08" in page.inner_text("#live-caption")
    assert "alarm" in page.inner_text("#live-status")
    _shot(page, served, "#live-panel", "live")


def test_retrain_button_without_the_token_is_refused(
    browser, served: Served, contexts
) -> None:
    page = _page(contexts, browser, served, signed_in=False)
    page.wait_for_selector("[data-testid=cycle]")
    assert "9b7e11aa0c42" in page.inner_text("#cycles")  # the recorded cycle's data version
    page.click("#retrain-run")
    page.wait_for_selector("#retrain-status[data-code]")
    assert page.get_attribute("#retrain-status", "data-code") == "401"
    assert "refused" in page.inner_text("#retrain-status")
    _shot(page, served, "#retrain-panel", "retrain")
    lock = served.tmp / "project" / ".vigil" / "retrain.lock"
    assert not lock.exists()  # nothing started


def test_full_page(browser, served: Served, contexts) -> None:
    """The whole console, signed in, with a scored part: the README's picture."""
    page = _page(contexts, browser, served, signed_in=True)
    _drop(page, "part-0413.png", png(_defect_image()))
    page.wait_for_selector(".overlay-img")
    page.wait_for_selector("#live-frame:not([hidden])", timeout=5000)
    page.wait_for_selector("[data-testid=cycle]")
    path = served.screens / "console.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    assert path.stat().st_size > 10_000
    if os.environ.get("VIGIL_CONSOLE_SCREENSHOT"):
        shutil.copy(path, REPO / "docs" / "console.png")
