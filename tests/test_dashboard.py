"""The dashboard at /ui in a real browser: Debian's Chromium driven by playwright.

Clicks through train (with the gate) -> report -> diagnose -> sample on a small
two_moons model, served by a real uvicorn on 127.0.0.1. Screenshots of each page go to
``$SBI_SERVICE_SCREENSHOTS`` (``benchmarks/screenshots.py`` sets it to ``docs/img``) or
to the test's temporary folder. In CI (``CI=true``) a missing Chromium fails the test;
elsewhere it skips with the reason.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_api import live_server

from sbi_service.config import Settings

KEY = "dashboard-key"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# The flags a closed network needs: no background connections, no first-run work.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
JOB_SECONDS = 180_000  # ms: a train or diagnose job on a loaded two-core machine


@pytest.fixture
def browser_page():
    if not Path(CHROMIUM).exists():
        reason = "Debian's chromium is not installed (apt-get install -y chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}: .ci/run installs it, so in CI this is an error")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


def test_click_through_train_diagnose_sample(browser_page, tmp_path):
    page = browser_page
    shots = Path(os.environ.get("SBI_SERVICE_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        home=tmp_path / "home", api_keys=[KEY], reload_interval_s=0, drain_timeout_s=5
    )
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    with live_server(settings) as http:
        page.goto(f"{http.base_url}/ui")
        page.wait_for_selector("text=No models yet")

        # A job without a key is refused, and the dashboard shows the server's message.
        page.click("#nav-jobs")
        page.fill("#train-name", "moons")
        page.click("#train-submit")
        page.wait_for_selector("#error:has-text('need an API key')")
        page.fill("#api-key", KEY)
        renders = page.get_attribute("#page", "data-renders")
        page.click("#save-key")  # stored, and the page drawn again
        page.wait_for_function(
            "(n) => document.getElementById('page').dataset.renders !== n", arg=renders
        )

        # Train two_moons with the gate right after training.
        page.fill("#train-name", "moons")
        page.select_option("#train-simulator", "two_moons")
        page.select_option("#train-estimator", "nsf")
        page.fill("#train-num", "500")
        page.fill("#train-epochs", "5")
        page.fill("#gate-sims", "30")
        page.fill("#gate-samples", "100")
        page.click("#train-submit")
        page.wait_for_selector(".job-row[data-state=succeeded]", timeout=JOB_SECONDS)
        outcome = page.text_content(".job-row .outcome")
        assert "moons v1" in outcome and ("passed" in outcome or "failed" in outcome)
        page.screenshot(path=str(shots / "dashboard-jobs.png"), full_page=True)

        # The version's verdict badge and its report.
        page.click("#nav-models")
        row = page.wait_for_selector(".version-row[data-model=moons][data-version='1']")
        verdict = row.query_selector(".badge").text_content()
        assert verdict in ("passed", "failed")
        row.query_selector(".show-report").click()
        frame = page.frame_locator("#report-frame")
        frame.locator("h1").wait_for()
        assert verdict.upper() in frame.locator("h1").text_content()
        assert frame.locator("text=TARP expected coverage").count() == 1
        page.screenshot(path=str(shots / "dashboard-models.png"), full_page=True)
        row.query_selector(".promote").click()  # recorded, and listed under the model
        page.wait_for_selector(".model li:has-text('v1 by key sha256:')")
        row = page.wait_for_selector(".version-row[data-model=moons][data-version='1']")

        # Diagnose again from the models page: a second job, followed live.
        page.fill("#gate-sims", "30")
        page.fill("#gate-samples", "100")
        row.query_selector(".diagnose").click()
        page.wait_for_selector(".job-row[data-state]")
        page.wait_for_function(
            "document.querySelectorAll('.job-row[data-state=succeeded]').length === 2",
            timeout=JOB_SECONDS,
        )
        assert "diagnose" in page.text_content(".job-row")

        # Posterior samples for a typed observation, then for an uploaded one.
        page.click("#nav-models")
        page.click(".version-row[data-model=moons] a:has-text('sample')")
        page.fill("#sample-x", "0.1, -0.2")
        page.fill("#sample-num", "1500")
        page.click("#sample-submit")
        page.wait_for_selector("#summary-table")
        assert page.locator("#summary-table tr").count() == 3  # header, theta1, theta2
        head = page.text_content("#sample-head")
        assert "moons v1" in head and "1500 samples" in head
        painted = page.evaluate(
            "() => { const c = document.getElementById('pairplot');"
            " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }"
        )
        assert painted > 10_000  # the pair plot drew histograms and scatter
        page.screenshot(path=str(shots / "dashboard-sample.png"), full_page=True)

        observation = tmp_path / "x.npy"
        np.save(observation, np.array([[0.3, 0.05]]))
        page.set_input_files("#sample-file", str(observation))
        page.wait_for_function("document.getElementById('sample-x').value === '[0.3,0.05]'")
        means = page.locator("#summary-table tr:nth-child(2) td").all_text_contents()
        page.click("#sample-submit")
        page.wait_for_function(
            "(old) => document.querySelector('#summary-table tr:nth-child(2) td:nth-child(2)')"
            ".textContent !== old",
            arg=means[1],
        )
    assert errors == []
