"""The dashboard in a real headless Chromium (Debian's chromium and chromedriver, driven by
Selenium), against the admin API served by uvicorn on loopback over a controller whose
``support`` canary turned bad and was rolled back, while ``billing`` still runs.

Without chromium, chromedriver or selenium the tests are skipped, unless ``CI`` is set:
then they fail (``scripts/install-browser.sh`` installs the browser)."""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from controller.admin import create_admin_app
from policies.domain import Phase
from tests.controller.release_rig import RELEASE, TOKEN, Rig, serving, wait_until
from tests.controller.test_dashboard import (
    AUTH,
    HEALTHY,
    LANGFUSE,
    PROJECT,
    fleet_rig,
    linked_settings,
    roll_out,
)

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REPOSITORY = Path(__file__).resolve().parents[2]
WAIT = 30.0
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--lang=en-US",
)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def find_browser() -> tuple[str, str]:
    """Chromium and chromedriver; skip when missing (fail under CI)."""
    chromium = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    driver = CHROMEDRIVER if os.access(CHROMEDRIVER, os.X_OK) else shutil.which("chromedriver")
    missing = [
        name for name, path in (("chromium", chromium), ("chromedriver", driver)) if path is None
    ]
    try:
        import selenium  # noqa: F401, PLC0415
    except ImportError:
        missing.append("selenium (pip install selenium)")
    if missing or chromium is None or driver is None:
        reason = (
            f"the browser test needs {', '.join(missing)}: "
            "run scripts/install-browser.sh (apt-get install chromium chromium-driver)"
        )
        if in_ci():
            pytest.fail(f"CI is set and {reason}")
        pytest.skip(reason)
    return chromium, driver


def start_browser(chromium: str, chromedriver: str, logs: Path) -> WebDriver:
    from selenium import webdriver  # noqa: PLC0415
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={logs / 'profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=chromedriver, log_output=str(logs / "chromedriver.log"))
    return webdriver.Chrome(service=service, options=options)


@dataclass
class Dashboard:
    """The served admin app, the controller behind it, and the browser."""

    rig: Rig
    base_url: str
    browser: WebDriver

    def open(self, token: str | None = TOKEN) -> None:
        """Load the page afresh and, with ``token``, enter it."""
        self.browser.get(self.base_url + "/")
        self.browser.execute_script("sessionStorage.clear()")
        self.browser.get(self.base_url + "/")
        wait_until(lambda: self.script("return document.readyState") == "complete", within=WAIT)
        if token is not None:
            self.enter_token(token)

    def enter_token(self, token: str) -> None:
        field = self.find("#token-input")
        field.clear()
        field.send_keys(token)
        self.find("#token-form button[type=submit]").click()

    def script(self, source: str, *args: Any) -> Any:
        return self.browser.execute_script(source, *args)

    def find(self, css: str) -> WebElement:
        from selenium.webdriver.common.by import By  # noqa: PLC0415

        return self.browser.find_element(By.CSS_SELECTOR, css)

    def count(self, css: str) -> int:
        return int(self.script("return document.querySelectorAll(arguments[0]).length", css))

    def text(self, css: str) -> str:
        return str(self.script("return document.querySelector(arguments[0])?.textContent", css))

    def wait_for(self, css: str) -> None:
        wait_until(lambda: self.count(css) > 0, within=WAIT, what=css)

    def console(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self.browser.get_log("browser")
        return entries

    def console_problems(self) -> list[dict[str, Any]]:
        """Errors and warnings logged since the last look."""
        return [entry for entry in self.console() if entry["level"] in ("SEVERE", "WARNING")]

    def phase(self, name: str) -> Phase:
        release = self.rig.state.release(name)
        assert release is not None
        return release.phase

    def screenshot(self, path: Path) -> None:
        """The whole page, not only the window."""
        shot = self.browser.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
        )
        path.write_bytes(base64.b64decode(shot["data"]))


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    chromium, chromedriver = find_browser()
    root = tmp_path_factory.mktemp("dashboard")
    rig, fleet = fleet_rig(root)
    try:
        app = create_admin_app(
            rig.controller,
            token=TOKEN,
            clock=rig.clock,
            dashboard=linked_settings(refresh_seconds=1),
        )
        with serving(app) as base_url, httpx.Client(base_url=base_url, headers=AUTH) as http:
            roll_out(rig, fleet, lambda: http.get("/dashboard/data").raise_for_status())
            browser = start_browser(chromium, chromedriver, root)
            try:
                yield Dashboard(rig, base_url, browser)
            finally:
                browser.quit()
    finally:
        rig.close()


def test_the_page_loads_without_console_errors_and_draws_its_charts(
    dashboard: Dashboard,
) -> None:
    dashboard.console()
    dashboard.open(token=None)
    assert "enter the admin token" in dashboard.text("#auth-status").lower()
    assert dashboard.count("section.release") == 0
    dashboard.enter_token(TOKEN)
    support = f"#release-{RELEASE}"
    dashboard.wait_for(f"{support} svg.metric-chart path.estimate")
    dashboard.wait_for(f"#release-{HEALTHY} svg.metric-chart path.estimate")
    assert "token accepted" in dashboard.text("#auth-status").lower()
    assert dashboard.console_problems() == []

    chart = f'{support} figure[data-metric="helpfulness"] svg.metric-chart'
    estimate = dashboard.find(f"{chart} path.estimate").get_attribute("d") or ""
    band = dashboard.find(f"{chart} path.band").get_attribute("d") or ""
    assert estimate.startswith("M")
    assert estimate.count("L") >= 20
    assert band.endswith("Z")
    assert band.count("L") >= 2 * estimate.count("L")
    assert dashboard.count(f"{chart} circle.point") == estimate.count("L") + 1
    assert dashboard.count(f"{chart} circle.point.verdict-fail") >= 1
    assert dashboard.count(f"{chart} line.tolerance") == 1
    assert "tolerance -0.05" in dashboard.text(f"{chart} text.tolerance-label")
    weights = dashboard.find(f"{support} svg.weight-chart path.weight").get_attribute("d") or ""
    assert weights.count("V") == 2  # up to 30 %, down to 0 %
    assert dashboard.count(f"{support} svg.weight-chart circle.event") == 3
    assert dashboard.text(f"{support} .phase") == "rolled back"


def test_the_rollback_is_in_the_log_with_its_reason_and_trace_links(
    dashboard: Dashboard,
) -> None:
    dashboard.open()
    row = f"#release-{RELEASE} table.log tbody tr"
    dashboard.wait_for(f'{row}[data-decision="rollback"]')
    decisions = dashboard.script(
        "return [...document.querySelectorAll(arguments[0])].map(r => r.dataset.decision)", row
    )
    assert decisions == ["rollback", "advance", "start"]
    rollback = f'{row}[data-decision="rollback"]'
    assert "critical metric shown worse: helpfulness" in dashboard.text(f"{rollback} td.reason")
    links = dashboard.script(
        "return [...document.querySelectorAll(arguments[0])].map(a => a.href)", f"{rollback} a"
    )
    assert len(links) == 5
    for link in links:
        assert link.startswith(f"{LANGFUSE}/project/{PROJECT}/traces/")
    assert dashboard.find(f"{rollback} a").get_attribute("rel") == "noopener noreferrer"


def test_pause_is_refused_without_the_right_token(dashboard: Dashboard) -> None:
    dashboard.open()
    pause = f'#release-{HEALTHY} button[data-action="pause"]'
    dashboard.wait_for(f"{pause}:enabled")

    dashboard.enter_token("not-the-token")
    wait_until(
        lambda: "token refused" in dashboard.text("#auth-status").lower(),
        within=WAIT,
        what="the refused token to show",
    )
    dashboard.find(pause).click()
    wait_until(
        lambda: "401" in dashboard.text("#action-status"),
        within=WAIT,
        what="the refused pause to show",
    )
    assert "pause refused: token refused (401)" in dashboard.text("#action-status")
    assert dashboard.phase(HEALTHY) is Phase.CANARY

    status = dashboard.browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0], {method: 'POST'}).then(r => done(r.status), e => done(String(e)));",
        f"releases/{HEALTHY}/pause",
    )
    assert status == 401
    assert dashboard.phase(HEALTHY) is Phase.CANARY

    dashboard.find("#forget-token").click()
    wait_until(lambda: dashboard.count("section.release") == 0, within=WAIT, what="no data")
    assert "enter the admin token" in dashboard.text("#auth-status").lower()
    dashboard.console()  # the refused calls are logged as failed loads, as they should be


def test_pause_works_with_the_token_and_rollback_asks_first(
    dashboard: Dashboard, tmp_path: Path
) -> None:
    dashboard.open()
    section = f"#release-{HEALTHY}"
    dashboard.wait_for(f'{section} button[data-action="pause"]:enabled')
    dashboard.find(f'{section} button[data-action="pause"]').click()
    wait_until(lambda: dashboard.phase(HEALTHY) is Phase.PAUSED, within=WAIT, what="paused")
    dashboard.wait_for(f'{section}[data-phase="paused"]')
    assert f"{HEALTHY}: pause done: the release is paused" in dashboard.text("#action-status")
    assert dashboard.count("section.release") == 2
    decision = dashboard.rig.state.decisions(HEALTHY)[-1]
    assert (decision.decision, decision.actor) == ("pause", "admin-api")

    dashboard.find(f'{section} button[data-action="rollback"]').click()
    wait_until(lambda: dashboard.script("return document.getElementById('confirm').open"))
    assert dashboard.text("#confirm-title") == f"Roll back {HEALTHY}?"
    dashboard.find("#confirm-cancel").click()
    wait_until(lambda: not dashboard.script("return document.getElementById('confirm').open"))
    assert dashboard.phase(HEALTHY) is Phase.PAUSED

    assert dashboard.console_problems() == []
    screenshot = tmp_path / "dashboard.png"
    dashboard.screenshot(screenshot)
    assert screenshot.read_bytes().startswith(b"\x89PNG")
    if os.environ.get("COALMINE_SAVE_SCREENSHOT") == "1":
        target = REPOSITORY / "docs" / "dashboard.png"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(screenshot, target)

    dashboard.find(f'{section} button[data-action="resume"]').click()
    wait_until(lambda: dashboard.phase(HEALTHY) is Phase.CANARY, within=WAIT, what="resumed")
    dashboard.wait_for(f'{section}[data-phase="canary"]')
    assert dashboard.count("section.release") == 2
