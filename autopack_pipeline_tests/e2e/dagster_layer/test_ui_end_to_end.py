"""End to end through the real servers: dagster-webserver and dagster-daemon on 127.0.0.1.

One webserver and one daemon per instance backend (a temporary SQLite instance, then the same on a
fresh PostgreSQL database), shared by the tests of this module. The whole pipeline is launched
through GraphQL and goes through the run queue and the daemon like a click in the UI; the results
are read back through GraphQL; a headless Chromium opens the asset graph and takes a screenshot.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from autopack_pipeline.settings import REPO_ROOT
from autopack_pipeline_tests.unit.dagster_layer.test_definitions import PIPELINE_ORDER

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get("AUTOPACK_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
ARTIFACTS = REPO_ROOT / "test-artifacts"
STARTUP_TIMEOUT_S = 150
RUN_TIMEOUT_S = 240
TICK_TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class DagsterServer:
    backend: str
    port: int
    home: Path
    logs: dict[str, Path]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def graphql(self, query: str, variables: dict | None = None, timeout: float = 30) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.loads(response.read())
        assert "errors" not in payload, payload["errors"]
        return payload["data"]

    def log_tails(self, lines: int = 40) -> str:
        parts = []
        for name, path in self.logs.items():
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
            parts.append(f"--- {name} ({path}) ---\n" + "\n".join(text))
        return "\n".join(parts)


def _sqlite_instance_yaml(home: Path) -> str:
    """The repository's dagster.yaml with every storage path moved into the temporary home."""
    config = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    config["local_artifact_storage"]["config"]["base_dir"] = str(home)
    config["storage"]["sqlite"]["base_dir"] = str(home / "storage")
    config["compute_logs"]["config"]["base_dir"] = str(home / "logs")
    return yaml.safe_dump(config)


def _postgres_database() -> tuple[str, Callable[[], None]]:
    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL unreachable at {sa.engine.make_url(PG_ADMIN_URL).render_as_string()}: {exc.orig}")
    name = f"autopack_dagster_e2e_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    return name, drop


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(process: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM the process group (server, its code server, run workers), then SIGKILL what is left.

    The group is the one ``start_new_session`` gave the server, so nothing outside the test is touched.
    """
    pgid = process.pid
    if _group_alive(pgid):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.5)
    if _group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)
    process.wait(timeout=10)


def _wait_for_workspace(server: DagsterServer, processes: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                pytest.fail(f"{process.args[0]} exited with {process.returncode}\n{server.log_tails()}")
        try:
            with urllib.request.urlopen(f"{server.url}/server_info", timeout=5) as response:
                last = f"server_info {response.status}"
            data = server.graphql(
                "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
            )
            entries = data["workspaceOrError"]["locationEntries"]
            last = str(entries)
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                errors = [e for e in entries if e["locationOrLoadError"]["__typename"] != "RepositoryLocation"]
                assert not errors, errors
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = repr(exc)
        time.sleep(1)
    pytest.fail(f"webserver not ready after {STARTUP_TIMEOUT_S}s ({last})\n{server.log_tails()}")


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def dagster_server(request, tmp_path_factory):
    backend = request.param
    root = tmp_path_factory.mktemp(f"e2e_{backend}")
    home = root / "dagster_home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("AUTOPACK_LLM_BACKEND", "ANTHROPIC_API_KEY")}
    env |= {
        "DAGSTER_HOME": str(home),
        "DATABASE_URL": f"sqlite:///{root / 'telemetry.db'}",
        "AUTOPACK_REPORTS_DIR": str(root / "reports"),
        # The pipeline leaves collect-samples tasks behind; running them here would start more runs
        # while the tests read results, so the auto-execution sensor is asked to explain why it waits.
        "AUTOPACK_TASK_GENERATION_AUTO_EXECUTE": "false",
        "PYTHONUNBUFFERED": "1",
    }
    cleanups = []
    if backend == "postgres":
        name, drop = _postgres_database()
        cleanups.append(drop)
        shutil.copy(REPO_ROOT / "deploy" / "dagster.postgres.yaml", home / "dagster.yaml")
        env |= {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": "5432", "DAGSTER_PG_DB": name,
                "DAGSTER_PG_USER": "postgres", "DAGSTER_PG_PASSWORD": ""}
    else:
        (home / "dagster.yaml").write_text(_sqlite_instance_yaml(home))

    server = DagsterServer(backend, free_port(), home, {"webserver": root / "webserver.log", "daemon": root / "daemon.log"})
    commands = {
        "webserver": [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(server.port), "-w", "workspace.yaml"],
        "daemon": [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
    }
    processes: list[subprocess.Popen] = []
    try:
        # Create the instance's schema once, before two processes race to create it on first use
        # (on SQLite that race can leave two rows in alembic_version).
        migrated = subprocess.run([str(BIN / "dagster"), "instance", "migrate"], cwd=root, env=env,
                                  capture_output=True, text=True, timeout=120, check=False)
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        for name, command in commands.items():
            with open(server.logs[name], "wb") as log:
                processes.append(
                    subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
                )
        _wait_for_workspace(server, processes)
        yield server
    finally:
        for process in reversed(processes):
            _stop(process)
        for cleanup in cleanups:
            cleanup()


LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status tags { key value } } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PipelineNotFoundError { message }
  }
}"""

RUN_STATUS = "query Run($id: ID!) { runOrError(runId: $id) { ... on Run { status endTime } } }"

ASSET = """
query Asset($key: AssetKeyInput!) {
  assetOrError(assetKey: $key) {
    ... on Asset {
      assetMaterializations(limit: 1) {
        runId
        metadataEntries { label __typename ... on IntMetadataEntry { intValue } ... on FloatMetadataEntry { floatValue } }
      }
      definition {
        groupName
        dependencyKeys { path }
        assetChecksOrError {
          ... on AssetChecks {
            checks { name blocking executionForLatestMaterialization { status runId evaluation { severity description } } }
          }
        }
      }
    }
  }
}"""

SENSOR_TICKS = """
query Ticks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status ticks(limit: 10) { status timestamp skipReason runIds } } }
  }
}"""


@pytest.fixture(scope="module")
def pipeline_run(dagster_server):
    """The whole pipeline, launched through GraphQL and run by the daemon; returns (run_id, end time)."""
    started = time.monotonic()
    params = {
        "selector": {"repositoryLocationName": "autopack", "repositoryName": "__repository__",
                     "jobName": "telemetry_pipeline_job"},
        "runConfigData": {},
    }
    launched = dagster_server.graphql(LAUNCH, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    assert {"key": "autopack/telemetry-db", "value": "write"} in launched["run"]["tags"]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    status = None
    while time.monotonic() < deadline:
        run = dagster_server.graphql(RUN_STATUS, {"id": run_id})["runOrError"]
        status = run["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(2)
    assert status == "SUCCESS", f"run {run_id} ended {status}\n{dagster_server.log_tails()}"
    print(f"[{dagster_server.backend}] pipeline run {run_id} took {time.monotonic() - started:.0f}s")
    return run_id, run["endTime"]


def _asset(server: DagsterServer, name: str) -> dict:
    return server.graphql(ASSET, {"key": {"path": [name]}})["assetOrError"]


def test_pipeline_materialises_six_assets_in_lineage_order(dagster_server, pipeline_run):
    run_id, _ = pipeline_run
    assets = {name: _asset(dagster_server, name) for name in PIPELINE_ORDER}
    for name, asset in assets.items():
        (materialization,) = asset["assetMaterializations"]
        assert materialization["runId"] == run_id, name
    for upstream, downstream in itertools.pairwise(PIPELINE_ORDER):
        parents = {"/".join(key["path"]) for key in assets[downstream]["definition"]["dependencyKeys"]}
        assert upstream in parents, f"{downstream} should depend on {upstream}"
    assert assets["telemetry_collection_run"]["definition"]["dependencyKeys"] == []
    samples = {e["label"]: e for e in assets["success_samples"]["assetMaterializations"][0]["metadataEntries"]}
    assert samples["sample_count"]["intValue"] > 0
    assert samples["largest_group_samples"]["__typename"] == "IntMetadataEntry"
    metrics = {e["label"]: e for e in assets["tier_metrics"]["assetMaterializations"][0]["metadataEntries"]}
    assert metrics["underestimation_rate_pct"]["__typename"] == "FloatMetadataEntry"


def test_check_results_are_recorded_for_the_run(dagster_server, pipeline_run):
    run_id, _ = pipeline_run
    checks = {}
    for name in ("raw_events", "tier_metrics"):
        for check in _asset(dagster_server, name)["definition"]["assetChecksOrError"]["checks"]:
            checks[check["name"]] = check
    for name in ("events_exist", "not_all_failures", "token_counts_plausible"):
        assert checks[name]["blocking"]
        execution = checks[name]["executionForLatestMaterialization"]
        assert execution["status"] == "SUCCEEDED" and execution["runId"] == run_id, (name, execution)
    # One fresh collection has no history to compare: the drift checks did not pass on nothing.
    for name in ("log_ratio_psi_drift", "log_ratio_ks_drift", "underestimation_cusum_drift"):
        execution = checks[name]["executionForLatestMaterialization"]
        assert execution["status"] == "FAILED", (name, execution)
        assert execution["evaluation"]["description"].startswith("could not evaluate"), (name, execution)
    # The simulator's profile breaches Tier 1: the check fails, and the run went on to calibrate.
    under = checks["tier1_underestimation_within_target"]
    assert not under["blocking"]
    assert under["executionForLatestMaterialization"]["status"] == "FAILED"
    assert under["executionForLatestMaterialization"]["evaluation"]["severity"] == "WARN"  # a breach is a finding, not a red catalog
    assert "Tier-1 target of at most 5%" in under["executionForLatestMaterialization"]["evaluation"]["description"]
    waste = checks["tier2_budget_waste_p90_below_3x"]["executionForLatestMaterialization"]
    assert waste["evaluation"]["severity"] == "WARN"
    psi = checks["log_ratio_psi_drift"]["executionForLatestMaterialization"]
    # One collection run has no reference window, so no group can be compared: not passed, and said so.
    assert "no group has 30 events" in psi["evaluation"]["description"]


def _finished_ticks_after(server: DagsterServer, sensor_name: str, after: float) -> list[dict]:
    """Ticks of ``sensor_name`` evaluated after ``after`` (epoch seconds), waiting for the daemon."""
    selector = {"repositoryLocationName": "autopack", "repositoryName": "__repository__", "sensorName": sensor_name}
    deadline = time.monotonic() + TICK_TIMEOUT_S
    ticks = []
    while time.monotonic() < deadline:
        sensor = server.graphql(SENSOR_TICKS, {"selector": selector})["sensorOrError"]
        assert sensor["__typename"] == "Sensor", sensor
        assert sensor["sensorState"]["status"] == "RUNNING"
        ticks = sensor["sensorState"]["ticks"]
        finished = [t for t in ticks if t["timestamp"] > after and t["status"] != "STARTED"]
        if finished:
            return finished
        time.sleep(3)
    pytest.fail(f"no {sensor_name} tick after the run within {TICK_TIMEOUT_S}s: {ticks}\n{server.log_tails()}")


def test_sensors_tick_and_explain_themselves(dagster_server, pipeline_run):
    _, end_time = pipeline_run
    # The pipeline calibrated this batch itself, so the gate sensor has nothing to request, and says so.
    gate = _finished_ticks_after(dagster_server, "calibration_gate_sensor", end_time)[-1]
    assert gate["status"] == "SKIPPED" and not gate["runIds"], gate
    assert "calibration already ran on it" in gate["skipReason"]
    assert "Calibration gate open" in gate["skipReason"]
    tasks = _finished_ticks_after(dagster_server, "auto_execution_sensor", 0)[-1]
    assert tasks["status"] == "SKIPPED"
    assert "AUTOPACK_TASK_GENERATION_AUTO_EXECUTE=false" in tasks["skipReason"]


CHROME_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # Big enough that the fitted graph draws full asset nodes rather than truncated minimal ones.
    "--disable-dev-shm-usage", "--window-size=2400,1400",
]
GROUPS = ("telemetry", "metrics", "calibration", "tasks")


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium driven by selenium; skips when Debian's chromium or its driver is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if not chromium or not chromedriver:
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    service = Service(executable_path=chromedriver, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Callable[[object, str], Path]:
    """Save a page's screenshot under the pytest tmp dir (printed); with AUTOPACK_SCREENSHOTS_DIR set,
    copy it there too (e.g. reports/screenshots)."""
    directory = tmp_path_factory.mktemp("screenshots")
    print(f"screenshots: {directory}")
    wanted = os.environ.get("AUTOPACK_SCREENSHOTS_DIR")

    def save(driver, name: str) -> Path:
        path = directory / f"{name}.png"
        driver.save_screenshot(str(path))
        if wanted:
            Path(wanted).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(wanted) / path.name)
        print(f"screenshot: {path}")
        return path

    return save


def _no_dialog_over_the_page(driver) -> bool:
    """Dagster's "join the community" dialog would cover the page a user opened on a fresh instance; the
    instance files turn it off (``nux: enabled: false``), so it never shows."""
    assert not driver.find_elements("xpath", "//button[normalize-space()='Skip']"), "a dialog covers the page"
    return True


def test_browser_shows_the_asset_graph(dagster_server, pipeline_run, browser, screenshots):
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    # The lineage page draws several groups collapsed; `expanded` opens them (the UI's group ids).
    expanded = ",".join(f"global@global:{group}" for group in GROUPS)
    driver.get(f"{dagster_server.url}/asset-groups?expanded={expanded}")

    def all_six_shown(d):
        clear = _no_dialog_over_the_page(d)
        text = d.find_element("tag name", "body").text
        # Wait for the nodes' status rows too, so the screenshot shows the run's results.
        return all(name in text for name in PIPELINE_ORDER) and "Loading" not in text and clear

    try:
        WebDriverWait(driver, 90, poll_frequency=1).until(all_six_shown)
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        suffix = "" if dagster_server.backend == "sqlite" else f"_{dagster_server.backend}"
        driver.save_screenshot(str(ARTIFACTS / f"asset_graph{suffix}.png"))
        screenshots(driver, f"asset_graph_{dagster_server.backend}")
    body = driver.find_element("tag name", "body").text
    for name in PIPELINE_ORDER:
        assert name in body


def _metadata_row(driver, server: DagsterServer, asset: str, key: str):
    """Open ``asset``'s page and return its metadata row ``key`` (the latest materialisation's), scrolled into view."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{server.url}/assets/{asset}")
    row_xpath = f"//tr[td[normalize-space()='{key}']]"

    def row_shown(d):
        _no_dialog_over_the_page(d)
        rows = d.find_elements("xpath", row_xpath)
        if not rows or not rows[0].is_displayed():
            return False
        # The value's cell can be drawn after the key's and the time's (a CI run read the row without it).
        cells = rows[0].find_elements("tag name", "td")
        return rows[0] if len(cells) >= 3 and cells[-1].text.strip() else False

    row = WebDriverWait(driver, 90, poll_frequency=1, ignored_exceptions=(StaleElementReferenceException,)).until(
        row_shown)
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", row)
    return row


def test_browser_shows_the_calibration_plot_inside_the_ui(dagster_server, pipeline_run, browser, screenshots):
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    next_step = _metadata_row(driver, dagster_server, "calibration_recommendations", "next_step")
    assert "apply_calibration_job" in next_step.text
    recommendations = _metadata_row(driver, dagster_server, "calibration_recommendations", "recommendations")
    assert "unidentifiable" in recommendations.text or "proposed" in recommendations.text
    screenshots(driver, f"calibration_recommendations_{dagster_server.backend}")
    # The UI inlines Markdown under 1,000 characters; the plot is longer, so it opens in a dialog.
    plot = _metadata_row(driver, dagster_server, "calibration_recommendations", "plot")
    link = plot.find_element("xpath", ".//a[normalize-space()='[Show Markdown]']")
    driver.execute_script("arguments[0].click()", link)  # a script click: no overlay can intercept it

    def plot_drawn(d):
        images = d.find_elements("css selector", "img[src^='data:image/png;base64,']")
        # naturalWidth > 0: the browser decoded the PNG, not a broken-image icon.
        # is_displayed too: the dialog fades in, so the decoded image is visible a moment later.
        shown = images and int(images[0].get_attribute("naturalWidth") or 0) > 0 and images[0].is_displayed()
        return images[0] if shown else False

    image = WebDriverWait(driver, 90, poll_frequency=0.5).until(plot_drawn)  # a loaded machine is slow
    assert image.size["width"] >= 600, image.size
    screenshots(driver, f"calibration_plot_{dagster_server.backend}")


def test_browser_shows_the_tasks_as_a_to_do_list(dagster_server, pipeline_run, browser, screenshots):
    driver = browser
    next_step = _metadata_row(driver, dagster_server, "generated_tasks", "next_step")
    assert "approve_task_job" in next_step.text
    tasks = _metadata_row(driver, dagster_server, "generated_tasks", "tasks")
    header = [cell.text for cell in tasks.find_elements("css selector", "th")]
    assert header[:3] == ["priority", "what", "next_step"], header
    first = tasks.find_element("xpath", ".//table/tbody/tr[td]")
    assert first.find_element("xpath", "./td[1]").text == "critical"  # most urgent first
    screenshots(driver, f"tasks_{dagster_server.backend}")
    metrics_row = _metadata_row(driver, dagster_server, "tier_metrics", "tier1")
    assert "underestimation" in metrics_row.text and "at most 5%" in metrics_row.text
    screenshots(driver, f"tier_metrics_{dagster_server.backend}")
    spend = _metadata_row(driver, dagster_server, "tier_metrics", "spend_by_model")
    assert "claude-sonnet-4-5" in spend.text
