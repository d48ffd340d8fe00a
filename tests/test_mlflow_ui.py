"""What a reviewer sees in the MLflow UI over a ratchet workspace, checked in a real browser.

One workspace is built for the module (a promoted version, then one the gate rejects), the real
`mlflow ui` serves its store, and Debian's chromium, driven by playwright, opens the pages a reviewer
opens. Each page is saved as a screenshot under the test's tmp_path; run with -s to see where.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from ratchet import app
from ratchet.cli import main
from ratchet.registry import DISPLAY, open_registry
from ratchet.workspace import open_workspace
from services import stop_group

CHROMIUM = Path("/usr/bin/chromium")
# a page of the UI can take seconds to fill in on two busy cores
PAGE_TIMEOUT_MS = 30_000

pytestmark = pytest.mark.usefixtures("prefect_server")

# as root chromium needs --no-sandbox; on a closed network its background connections are refused
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# tall, so that the pages' own scrolling panes show most of what they hold in one screenshot
VIEWPORT = {"width": 1400, "height": 1600}
UI_STARTUP_S = 180  # the UI imports for 10-30 s on two busy cores
PLOT = "plots/accuracy_over_versions.png"


@dataclass(frozen=True)
class Version:
    number: str
    description: str
    run_id: str
    experiment_id: str
    report_title: str  # the first heading of its report/report.md
    artifacts: frozenset[str]
    verdict: str  # its verdict tag


@dataclass(frozen=True)
class Reviewed:
    model: str
    versions: dict[str, Version]  # by the gate's action: "promoted", "rejected"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new workspace with its MLflow store created, so that the UI can start on it."""
    root = tmp_path_factory.mktemp("ui") / "ws"
    app.init(root, model_name="ui-it")
    params = root / "params.yaml"
    # a third of the default epochs still passes the gate's floor: the pages are under test, not the model
    params.write_text(re.sub(r"num_epochs: \d+", "num_epochs: 4", params.read_text()))
    return root


@dataclass(frozen=True)
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def ui_server(workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real `mlflow ui` over the workspace's store, starting; `mlflow_ui` below waits for it."""
    ws = open_workspace(workspace)
    port = free_port()
    log = tmp_path_factory.mktemp("mlflow-ui") / "ui.log"
    # background jobs (a runner and seven consumers) serve no page a reviewer opens
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", ws.tracking_uri]
            + ["--default-artifact-root", ws.artifact_uri, "--host", "127.0.0.1", "--port", str(port)]
            + ["--workers", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its uvicorn child goes with it in teardown
        )
    try:
        yield Server(process, f"http://127.0.0.1:{port}", log)
    finally:
        stop_group(process)


@pytest.fixture(scope="module")
def reviewed(
    workspace: Path, ui_server: Server, stream_files: dict[str, Path], prefect_server: None
) -> Reviewed:
    """A promoted version, then one the gate rejects (scrambled labels), while the UI starts."""
    outcomes = {}
    for batch in ("digits-0-4", "digits-scrambled"):
        app.ingest(workspace, stream_files[batch])
        outcome = app.retrain(workspace)
        assert outcome is not None, f"no cycle ran for {batch}"
        outcomes[outcome.action] = outcome.version
    assert set(outcomes) == {"promoted", "rejected"}, outcomes

    # what the UI shows is read back from the registry, so the checks follow whatever ratchet writes
    registry = open_registry(open_workspace(workspace))
    client = registry.client
    versions = {}
    for action, number in outcomes.items():
        mv = client.get_model_version(registry.name, number)
        run = client.get_run(mv.run_id)
        into = workspace.parent / f"report-{number}"
        into.mkdir()
        report = Path(client.download_artifacts(mv.run_id, "report/report.md", str(into)))
        title = report.read_text().splitlines()[0].removeprefix("# ")
        listed = {a.path for d in ("report", "plots") for a in client.list_artifacts(mv.run_id, d)}
        versions[action] = Version(
            number,
            mv.description,
            mv.run_id,
            run.info.experiment_id,
            title,
            frozenset(listed),
            mv.tags["verdict"],
        )
    return Reviewed(registry.name, versions)


@pytest.fixture(scope="module")
def mlflow_ui(reviewed: Reviewed, ui_server: Server) -> str:
    """The UI's base URL, once it answers."""
    deadline = time.monotonic() + UI_STARTUP_S
    while True:
        if ui_server.process.poll() is not None:
            pytest.fail(f"mlflow ui exited with {ui_server.process.returncode}:\n{ui_server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{ui_server.url}/health", timeout=5) as response:
                if response.status == 200:
                    return ui_server.url
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"mlflow ui did not answer in {UI_STARTUP_S} s:\n{ui_server.log_tail()}")
        time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(
            f"no browser: Debian's chromium is not installed at {CHROMIUM} (`make test` installs it as "
            "root with apt-get)"
        )
    expect.set_options(timeout=PAGE_TIMEOUT_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    yield context.new_page()
    context.close()


def screenshot(page: Page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def lead(description: str) -> str:
    """The description's first sentences, at least 40 characters: what a reviewer reads first."""
    sentences = re.findall(r".+?[.!?](?=\s|$)", description)
    text = ""
    for sentence in sentences:
        text = f"{text} {sentence.strip()}".strip()
        if len(text) >= 40:
            break
    return text or description


@pytest.mark.parametrize("action", ["promoted", "rejected"])
def test_the_version_page_shows_the_decision(
    reviewed: Reviewed, mlflow_ui: str, page: Page, action: str, tmp_path: Path
) -> None:
    version = reviewed.versions[action]
    page.goto(f"{mlflow_ui}/#/models/{reviewed.model}/versions/{version.number}")
    expect(page.get_by_role("heading", name=f"Version {version.number}")).to_be_visible()
    expect(page.get_by_text(lead(version.description))).to_be_visible()
    screenshot(page, tmp_path / f"version-{version.number}-{action}.png")


def test_the_model_page_lists_the_versions(
    reviewed: Reviewed, mlflow_ui: str, page: Page, tmp_path: Path
) -> None:
    page.goto(f"{mlflow_ui}/#/models/{reviewed.model}")
    expect(page.get_by_role("heading", name=reviewed.model)).to_be_visible()
    for version in reviewed.versions.values():
        expect(page.get_by_role("link", name=f"Version {version.number}", exact=True)).to_be_visible()
        expect(page.get_by_text(version.verdict).first).to_be_visible()  # the verdict tag
    expect(page.get_by_text("Champion history, newest first").first).to_be_visible()
    screenshot(page, tmp_path / "model-versions.png")


@pytest.mark.parametrize("action", ["promoted", "rejected"])
def test_the_run_artifacts_show_the_report_and_the_plots(
    reviewed: Reviewed, mlflow_ui: str, page: Page, action: str, tmp_path: Path
) -> None:
    version = reviewed.versions[action]
    page.goto(f"{mlflow_ui}/#/experiments/{version.experiment_id}/runs/{version.run_id}/artifacts")
    page.get_by_text("report", exact=True).click()
    page.get_by_text("report.md", exact=True).click()
    expect(page.get_by_role("heading", name=version.report_title)).to_be_visible()
    screenshot(page, tmp_path / f"report-{version.number}-{action}.png")

    assert PLOT in version.artifacts, sorted(version.artifacts)
    page.get_by_text("plots", exact=True).click()
    page.get_by_text(PLOT.rsplit("/", 1)[1], exact=True).click()
    image = page.get_by_role("img", name=PLOT)
    expect(image).to_be_visible()
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    screenshot(page, tmp_path / f"plot-{version.number}-{action}.png")


def test_the_registry_keeps_the_record_on_the_run_and_shows_six_tags(
    workspace: Path, reviewed: Reviewed, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The versions table shows six plain tags and a description led by the verdict and its reason;
    the record stays on the run; the registered model lists the champion's history; status is a table."""
    client = open_registry(open_workspace(workspace)).client
    promoted, rejected = (
        client.get_model_version(reviewed.model, reviewed.versions[a].number)
        for a in ("promoted", "rejected")
    )
    first, second = reviewed.versions["promoted"].number, reviewed.versions["rejected"].number
    for mv in (promoted, rejected):
        assert sorted(mv.tags) == sorted(DISPLAY), mv.tags
        assert client.get_run(mv.run_id).data.tags["ratchet.cycle_id"]
    assert promoted.tags["verdict"] == "promoted" and promoted.tags["parent"] == "none"
    assert re.fullmatch(r"0\.\d{3}", promoted.tags["new accuracy"]) and promoted.tags["old accuracy"] == "-"
    assert rejected.tags["verdict"].startswith("rejected: ") and rejected.tags["parent"] == first
    assert re.fullmatch(r"0\.\d{3} -> 0\.\d{3}", rejected.tags["old accuracy"])
    assert promoted.description.startswith("Promoted: new 0.")
    reasons = next(v for v in app.status(workspace).versions if v.version == second).reasons
    first_failed = next(r for r in reasons if r.startswith("FAIL")).removeprefix("FAIL: ")
    assert rejected.description.startswith(f"Rejected: {first_failed}")
    history = client.get_registered_model(reviewed.model).description
    assert f"| promoted | gate | - -> {first} |" in history

    monkeypatch.setenv("COLUMNS", "200")  # wide enough that no cell is cut
    assert main(["status", "-w", str(workspace)]) == 0
    out = capsys.readouterr().out
    header = r"^version +status +parent +batches +old accuracy +new accuracy +verdict +by$"
    assert re.search(header, out, re.M), out
    accuracy = r"0\.\d{3} -> 0\.\d{3}"
    row = (
        rf"^{reviewed.versions['rejected'].number} +rejected +{first} +\S+ +{accuracy} .* rejected: .* gate$"
    )
    assert re.search(row, out, re.M), out
