"""The explorer page in Debian's headless Chromium (Selenium, /usr/bin/chromium): log in through
the form (a session cookie), see the endpoint appear, submit `/bin/echo hello` from the form
generated from the JobSpec schema and watch it reach COMPLETED with `hello` in its output,
cancel a sleeping job, upload a file and download it again, resume the session after a
reload, log out. Against the real broker, a real endpoint and the gateway on uvicorn;
the screenshot it takes is docs/explorer.png (written when ORBIT_MQ_SCREENSHOT=1 or missing)."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import StartEndpoint
from starlette.applications import Starlette
from test_web import serve

from orbit_mq.config import Settings
from orbit_mq.web import create_app
from orbit_mq.workers.plugins.psij.executors import env_name
from orbit_mq.workers.plugins.psij.plugin import PsiJ
from orbit_mq.workers.plugins.staging.plugin import Staging
from orbit_mq.workers.plugins.sysinfo import SysInfo

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import (  # noqa: E402
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
WITHIN = 30.0  # s for anything the page should show
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "explorer.png"
T = TypeVar("T")


def _usable() -> str | None:
    if not (CHROMIUM.exists() and DRIVER.exists()):
        return "needs Debian's chromium and chromium-driver (bash scripts/ensure-browser.sh)"
    return None


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    missing = _usable()
    if missing:
        if os.environ.get("ORBIT_MQ_REQUIRE_BROWSER"):
            pytest.fail(missing)
        pytest.skip(missing)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-dev-shm-usage",
                 "--window-size=1280,1000"):  # fmt: skip
        options.add_argument(flag)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    prefs = {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    options.add_experimental_option("prefs", prefs)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(str(DRIVER)))
    driver.downloads = downloads
    try:
        yield driver
    finally:
        for entry in driver.get_log("browser"):  # shown when the test fails
            print("browser:", entry["level"], entry["message"])
        driver.quit()


@pytest.fixture
async def page(
    browser: Any, settings: Settings, start_endpoint: StartEndpoint, tmp_path: Path
) -> AsyncIterator[Page]:
    files = tmp_path / "files"
    files.mkdir()
    await start_endpoint([PsiJ, SysInfo, Staging.configured(roots=[files])])
    app = create_app(settings, keep_alive=1.0, webhooks=None)
    async for url in serve(app):
        yield Page(browser, url, files, app)
        await app.state.users.close(retire=True)


class Page:
    """The browser on the explorer; every Selenium call runs in a thread, so the endpoint and
    the gateway in this test's event loop keep serving."""

    def __init__(self, driver: Any, url: str, files: Path, app: Starlette) -> None:
        self.driver, self.url, self.files, self.app = driver, url, files, app

    async def run(self, work: Callable[[], T]) -> T:
        return await asyncio.to_thread(work)

    def wait(self, condition: Callable[[Any], T], what: str) -> T:
        # stale: an element of the page before a reload (the logout reloads the page); while
        # the reload replaces the document, chromedriver may say so in an error of its own
        def tried(driver: Any) -> T | bool:
            try:
                return condition(driver)
            except WebDriverException as exc:
                if "does not belong to the document" not in (exc.msg or ""):
                    raise
                return False

        waiting = WebDriverWait(
            self.driver,
            WITHIN,
            poll_frequency=0.2,
            ignored_exceptions=[StaleElementReferenceException],
        )
        return waiting.until(tried, f"the page did not show {what} within {WITHIN} s")

    def find(self, css: str) -> WebElement:
        return self.wait(lambda d: d.find_element(By.CSS_SELECTOR, css), css)

    def text(self, css: str, text: str) -> None:
        def shown(driver: Any) -> bool:
            return text in driver.find_element(By.CSS_SELECTOR, css).text

        try:
            self.wait(shown, f"{text!r} in {css}")
        except Exception:
            print(f"{css} shows:", self.driver.find_element(By.CSS_SELECTOR, css).text)
            raise

    def log_in(self, user: str, password: str) -> None:
        self.driver.get(self.url + "/")
        self.find("#login input[name=user]").send_keys(user)
        self.find("#login input[name=password]").send_keys(password)
        self.find("#login button").click()

    def submit(self, executable: str, *arguments: str) -> None:
        self.find("#tabs [data-tab=jobs]").click()
        form = self.find("#submit-form")
        form.find_element(By.NAME, "executable").send_keys(executable)
        form.find_element(By.CSS_SELECTOR, "details summary").click()
        if arguments:
            form.find_element(By.NAME, "arguments").send_keys("\n".join(arguments))
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        self.text("#status", "submitted")

    def open_job(self, row: int) -> None:
        self.wait(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")) > row, "jobs")
        self.find(f"#jobs tbody tr:nth-child({row + 1})").click()


@pytest.fixture(autouse=True)
def site_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(env_name("local", "custom_attributes"), '{"local.note": "from the site"}')


async def test_the_whole_flow_in_a_real_browser(page: Page, name: str, tmp_path: Path) -> None:
    await page.run(lambda: page.log_in("guest", "wrong"))
    await page.run(lambda: page.text("#login-error", "Wrong user or password"))
    await page.run(lambda: page.find("#login input[name=password]").clear())
    await page.run(lambda: page.log_in("guest", "guest"))
    await page.run(lambda: page.find(f"li[data-endpoint={name}]").click())

    await page.run(lambda: page.find("#tabs [data-tab=jobs]").click())
    await page.run(lambda: page.text("#site-defaults", "from the site"))  # shown by the form
    await page.run(lambda: page.submit("/bin/echo", "hello"))
    await page.run(lambda: page.text("#jobs", "COMPLETED"))  # live, from the event stream
    await page.run(lambda: page.open_job(0))
    await page.run(lambda: page.text("#job-output", "hello"))
    await page.run(lambda: page.text("#job", "COMPLETED"))
    await page.run(lambda: page.driver.save_screenshot(str(tmp_path / "explorer.png")))

    await page.run(lambda: page.submit("/bin/sleep", "60"))
    await page.run(lambda: page.text("#jobs", "ACTIVE"))
    await page.run(lambda: page.open_job(0))  # newest first
    await page.run(lambda: page.text("#job", "ACTIVE"))
    await page.run(lambda: page.find("#cancel").click())
    await page.run(lambda: page.text("#job", "CANCELED"))

    upload = tmp_path / "upload.txt"
    upload.write_bytes(b"through the browser\n" * 1000)
    await page.run(lambda: page.find("#tabs [data-tab=files]").click())
    await page.run(lambda: page.find("#upload-file").send_keys(str(upload)))
    await page.run(lambda: page.text("#files", "upload.txt"))
    assert (page.files / "upload.txt").read_bytes() == upload.read_bytes()
    assert await page.run(lambda: page.find("#upload-progress").get_attribute("value")) == "1"
    await page.run(lambda: page.find("[data-download='upload.txt']").click())
    downloaded = page.driver.downloads / "upload.txt"
    await page.run(lambda: page.wait(lambda _: downloaded.exists(), "the downloaded file"))
    assert downloaded.read_bytes() == upload.read_bytes()

    await page.run(lambda: page.find("#tabs [data-tab=host]").click())
    await page.run(lambda: page.text(".metrics", "CPU"))
    # a reload resumes the session from its cookie; the logout ends it for good
    assert len(page.app.state.sessions) == 1
    (cookie,) = await page.run(lambda: page.driver.get_cookies())
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    await page.run(lambda: page.driver.refresh())
    await page.run(lambda: page.text("#who", "as guest"))
    await page.run(lambda: page.find(f"li[data-endpoint={name}]"))
    assert await page.run(lambda: page.find("#login").get_attribute("hidden")) is not None
    await page.run(lambda: page.find("#logout").click())
    await page.run(
        lambda: page.wait(lambda d: d.find_element(By.ID, "login").is_displayed(), "the login form")
    )
    assert len(page.app.state.sessions) == 0
    assert await page.run(lambda: page.driver.get_cookies()) == []
    await page.run(lambda: page.driver.refresh())
    await page.run(lambda: page.find("#login input[name=user]"))
    assert await page.run(lambda: page.find("#main").get_attribute("hidden")) is not None

    if os.environ.get("ORBIT_MQ_SCREENSHOT") or not SCREENSHOT.exists():
        shutil.copyfile(tmp_path / "explorer.png", SCREENSHOT)  # README's picture
