"""What a person sees: after a smoke pipeline, headless Chromium (Debian's, driven through its chromedriver)
opens the MLflow UI served by `ropelab ui` and the Prefect UI served by `ropelab server` and finds the runs,
the plots, the zoo table, the flow run and a deployment with its schedule. Screenshots are kept as test
artifacts (build/test-artifacts/ui/)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from ropelab.tasks import tracking
from ropelab.tasks.servers import TRAINING_VIEW
from tests.ops.conftest import ARTIFACTS, ROPELAB, Server, client_env, free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not shutil.which("chromedriver"),
                                                   reason="needs Debian's chromium-driver (.ci/system-packages)")]
EXPERIMENT = "ui-check"
SHOTS = ARTIFACTS / "ui"
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-quic", "--window-size=1500,1100")


@pytest.fixture(scope="module")
def pipeline_run(prefect_server):
    done = subprocess.run([ROPELAB, "pipeline", "--config", "smoke", "--set", f"experiment={EXPERIMENT}"],
                          env=client_env(), capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    experiment = tracking.client().get_experiment_by_name(EXPERIMENT)
    run = tracking.client().search_runs([experiment.experiment_id], "tags.`ropelab.stage` = 'pipeline'",
                                        order_by=["attributes.start_time DESC"], max_results=1)[0]
    return experiment.experiment_id, run


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="ropelab-chromium-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def page_shows(driver, url: str, texts: list[str], shot: str, timeout: float = 90) -> str:
    """Open ``url``, wait until every text is on the rendered page, save a screenshot; the page's text."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    try:
        wait_for(lambda: all(t in driver.find_element(By.TAG_NAME, "body").text for t in texts), timeout,
                 f"{texts} on {url}")
    finally:
        driver.save_screenshot(str(SHOTS / f"{shot}.png"))
    return driver.find_element(By.TAG_NAME, "body").text


def image_loaded(driver, min_width: int = 300) -> bool:
    """A plot-sized <img> that the browser decoded (MLflow shows an artifact image from a blob: URL, so the
    source does not name the file; the page's path header does, checked before)."""
    return driver.execute_script(
        "return [...document.images].some(i => i.complete && i.naturalWidth >= arguments[0])", min_width)


def test_the_mlflow_ui_shows_the_pipeline_its_stages_the_lambda_plot_and_the_zoo_table(pipeline_run, browser):
    experiment_id, run = pipeline_run
    stages = {r.info.run_name: r for r in tracking.child_runs(run.info.run_id)}
    search = next(r for name, r in stages.items() if name.startswith("search1-"))
    evaluation = stages["evaluate-finetuned"]
    ui = Server("ui", free_port(), "/health")
    try:
        base, view = f"{ui.url}/#/experiments/{experiment_id}", f"?{TRAINING_VIEW}"  # the URL `ropelab ui` prints
        page_shows(browser, base + view, [EXPERIMENT, run.info.run_name], "mlflow-experiment")
        # the pipeline run: its description is the summary, with the headline; its stage runs are listed
        page_shows(browser, f"{base}/runs/{run.info.run_id}{view}", [run.info.run_name, "ropelab pipeline: smoke"],
                   "mlflow-pipeline-run")
        page_shows(browser, f"{base}/runs/{search.info.run_id}{view}", [search.info.run_name, run.info.run_name],
                   "mlflow-stage-run")  # a stage run names its parent
        page_shows(browser, f"{base}/runs/{search.info.run_id}/artifacts/result/lambda_curves.png{view}",
                   ["lambda_curves.png"], "mlflow-lambda-plot")
        wait_for(lambda: image_loaded(browser), 60, "the λ plot image")
        browser.save_screenshot(str(SHOTS / "mlflow-lambda-plot.png"))
        table = Path(urlparse(evaluation.info.artifact_uri).path, "zoo", "zoo.md").read_text().splitlines()
        first_row = [line for line in table if line.startswith("|")][2]  # after the header and its rule
        cells = [cell.strip().strip("*") for cell in first_row.strip("|").split("|")]
        page_shows(browser, f"{base}/runs/{evaluation.info.run_id}/artifacts/zoo/zoo.md{view}",
                   ["zoo.md", "method", *cells[:3]], "mlflow-zoo-table")  # rendered as a table: name and numbers
    finally:
        ui.stop()


def test_the_prefect_ui_shows_the_pipeline_flow_run_and_a_scheduled_deployment(pipeline_run, prefect_server,
                                                                                prefect_api, browser, tmp_path):
    _, run = pipeline_run
    config = tmp_path / "nightly.yaml"
    config.write_text("schedules:\n  - {name: nightly-tiny, flow: pipeline, config: tiny, cron: '0 3 * * *'}\n")
    served = subprocess.Popen([ROPELAB, "serve", "--config", str(config)], env=client_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: httpx.get(f"{prefect_api}/deployments/name/ropelab/nightly-tiny").status_code == 200, 120,
                 "the deployment to be registered")
        flow_run = httpx.get(f"{prefect_api}/flow_runs/{run.data.tags['prefect.flow_run_id']}").json()
        page_shows(browser, f"{prefect_server.url}/runs/flow-run/{flow_run['id']}", [flow_run["name"], "Completed", "finished (cache:"],
                   "prefect-pipeline-flow-run")  # its subflows and tasks, and the stage results in its logs
        page_shows(browser, f"{prefect_server.url}/deployments", ["nightly-tiny"], "prefect-deployments")
        deployment = httpx.get(f"{prefect_api}/deployments/name/ropelab/nightly-tiny").json()
        page_shows(browser, f"{prefect_server.url}/deployments/deployment/{deployment['id']}",
                   ["nightly-tiny", "At 03:00 AM"], "prefect-deployment-schedule")
    finally:
        served.terminate()
        served.wait(60)
