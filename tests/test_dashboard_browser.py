"""The dashboard in a real headless Chromium against the real service (Ray Serve).

A key holder signs in, submits a job from a URL, watches it reach ``completed`` on the
page, downloads the output with the page's button and decodes it; the operator signs
in, creates a key, revokes it, and the API refuses the revoked key.  Screenshots of
the main pages are written under the test's tmp_path (their paths are printed).

Needs Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them with
apt-get); skipped, saying so, where they are missing.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from local_http import free_port, serve_directory, serve_receiver
from ray import serve
from stored_keys import add_key, bearer

from pipelines.probe import probe
from pipelines.sample_video import SampleSpec, write_sample_video
from serve_app.deployments import build_app
from serve_app.jobs.sqlite_store import SqliteStore
from serve_app.settings import Settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip(
        "no Chromium: install Debian's chromium and chromium-driver "
        "(`make test` does, with apt-get, where it can)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is missing: pip install -e '.[dev]'"
)
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

pytestmark = pytest.mark.usefixtures("ray_session")

ADMIN = "adm_browser-test-admin-token-0123456789"


@dataclass
class Service:
    base: str
    media: str
    store: SqliteStore
    clip: Path


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    data = tmp_path_factory.mktemp("dashboard-service")
    www = tmp_path_factory.mktemp("dashboard-www")
    write_sample_video(www / "clip.mp4", SampleSpec(seconds=1))
    media, media_server = serve_directory(www)
    settings = Settings(
        data_dir=data,
        port=free_port(),
        api_replicas=1,
        allow_private_urls=True,
        lease_seconds=5,
        poll_seconds=0.2,
        chunk_frames=12,
        admin_token=ADMIN,
        dashboard=False,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": settings.port})
    serve.run(build_app(settings), name="retroiva", route_prefix="/")
    try:
        yield Service(
            f"http://127.0.0.1:{settings.port}",
            media,
            SqliteStore(settings.sqlite_path),
            www / "clip.mp4",
        )
    finally:
        serve.shutdown()
        media_server.shutdown()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(tmp_path / "downloads"),
            "download.prompt_for_download": False,
        },
    )
    driver = webdriver.Chrome(
        options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER)
    )
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver: webdriver.Chrome, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")


def _navigate(driver: webdriver.Chrome, action: Callable[[], object]) -> None:
    """Do ``action`` (a click that submits a form) and wait for the next page: a click
    returns before the form's response has arrived."""
    page = driver.find_element(By.TAG_NAME, "html")
    action()
    WebDriverWait(driver, 60).until(expected_conditions.staleness_of(page))


def _click(driver: webdriver.Chrome, element_id: str) -> None:
    """Click the element and wait for the next page.  A page that polls reloads itself,
    and an element found just before a reload is gone when clicked (Chromium: "Node
    with given id does not belong to the document", once in CI), so then the click is
    tried again on the new page."""
    for attempt in range(5):
        try:
            _navigate(driver, driver.find_element(By.ID, element_id).click)
            return
        except WebDriverException as exc:
            gone = isinstance(exc, StaleElementReferenceException) or (
                "does not belong to the document" in str(exc)
            )
            if not gone or attempt == 4:
                raise


def _sign_in(driver: webdriver.Chrome, base: str, token: str) -> None:
    driver.get(f"{base}/dashboard/")
    assert driver.current_url == f"{base}/dashboard/login"
    driver.find_element(By.ID, "token").send_keys(token)
    _click(driver, "sign-in")


def _text(driver: webdriver.Chrome, css: str) -> str:
    try:
        return driver.find_element(By.CSS_SELECTOR, css).text
    except (NoSuchElementException, StaleElementReferenceException):
        return ""  # between a page's reloads


def _watch(driver: webdriver.Chrome, tmp_path: Path, shot: str | None = None) -> set[str]:
    """Stay on a job's page, which follows the job on its own (it polls), until it
    shows an end; returns the statuses it showed on the way."""
    seen: set[str] = set()

    def finished(driver: webdriver.Chrome) -> bool:
        status = _text(driver, '#job [data-field="status"]')
        if shot and status == "processing" and status not in seen:
            _shot(driver, tmp_path, shot)
        seen.add(status)
        return status in ("completed", "failed", "canceled")

    WebDriverWait(driver, 240, poll_frequency=0.3).until(finished)
    assert _text(driver, '#job [data-field="status"]') == "completed", driver.page_source
    assert _text(driver, '#job [data-field="progress"]') == "100.0 %"
    assert "link valid until" in driver.find_element(By.CSS_SELECTOR, ".download").text
    return seen


def _download(driver: webdriver.Chrome, tmp_path: Path, job_id: str) -> Path:
    """Press the job page's download button; the saved file."""
    driver.find_element(By.ID, "download").click()
    downloaded = tmp_path / "downloads" / f"{job_id}.mp4"
    deadline = time.monotonic() + 60
    while not downloaded.exists() or list(downloaded.parent.glob("*.crdownload")):
        assert time.monotonic() < deadline, list((tmp_path / "downloads").glob("*"))
        time.sleep(0.2)
    return downloaded


def _reload_until(driver: webdriver.Chrome, css: str, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _text(driver, css) != text:
        assert time.monotonic() < deadline, driver.page_source
        time.sleep(0.5)
        driver.refresh()


def test_key_holder_and_operator_in_chromium(
    service: Service, browser: webdriver.Chrome, tmp_path: Path
):
    key, record = add_key(service.store)
    base = service.base
    source = probe(service.clip)
    hook_url, receiver = serve_receiver()

    # A key holder signs in and submits a job from a URL, with a webhook.
    _sign_in(browser, base, key)
    _shot(browser, tmp_path, "01-jobs-empty")
    assert browser.current_url == f"{base}/dashboard/jobs", browser.page_source
    assert record.prefix in browser.find_element(By.CSS_SELECTOR, ".who").text
    browser.find_element(By.ID, "video_url").send_keys(f"{service.media}/clip.mp4")
    Select(browser.find_element(By.ID, "preset")).select_by_value("archive")
    Select(browser.find_element(By.ID, "upscale_factor")).select_by_value("2")
    Select(browser.find_element(By.ID, "engine")).select_by_value("classical")
    browser.find_element(By.ID, "webhook_url").send_keys(hook_url)
    _click(browser, "submit")
    assert "/dashboard/jobs/job_" in browser.current_url, browser.page_source
    job_id = browser.current_url.rsplit("/", 1)[1]

    # The page follows the job until it shows `completed`, with a download button.
    seen = _watch(browser, tmp_path, "02-job-processing")
    assert seen & {"queued", "processing"}, seen  # it was watched while it ran
    _shot(browser, tmp_path, "03-job-completed")

    # Its download button saves the output, which decodes at twice the input's size.
    output = probe(_download(browser, tmp_path, job_id))
    assert (output.width, output.height) == (source.width * 2, source.height * 2)
    assert output.frame_count == source.frame_count > 0

    # The webhook's delivery is listed per attempt; Redeliver sends it again.
    _reload_until(browser, "#delivery-status", "delivered")
    assert "200" in _text(browser, "#deliveries tbody tr:nth-child(1)")
    _click(browser, "redeliver")
    _reload_until(browser, "#delivery-status", "delivered")
    second = _text(browser, "#deliveries tbody tr:nth-child(2)")
    assert "(redelivery)" in second and "200" in second, browser.page_source
    _shot(browser, tmp_path, "04-job-deliveries")
    receiver.shutdown()

    # A local file dropped in (here: chosen; the same script) is uploaded with tus and
    # becomes a job like a URL does.
    browser.get(f"{base}/dashboard/jobs")
    Select(browser.find_element(By.ID, "upscale_factor")).select_by_value("2")
    Select(browser.find_element(By.ID, "engine")).select_by_value("classical")
    _navigate(browser, lambda: browser.find_element(By.ID, "file").send_keys(str(service.clip)))
    assert "/dashboard/jobs/job_" in browser.current_url, browser.page_source
    uploaded_id = browser.current_url.rsplit("/", 1)[1]
    assert "upload:upl_" in browser.find_element(By.ID, "job").text
    _watch(browser, tmp_path)
    output = probe(_download(browser, tmp_path, uploaded_id))
    assert (output.width, output.height) == (source.width * 2, source.height * 2)
    assert output.frame_count == source.frame_count

    # Account: the rate limit, and a rotated webhook secret shown once.
    browser.get(f"{base}/dashboard/account")
    rotate = browser.find_element(By.ID, "rotate-secret")

    def rotate_and_confirm() -> None:
        rotate.click()
        browser.switch_to.alert.accept()

    _navigate(browser, rotate_and_confirm)
    secret = browser.find_element(By.ID, "new-webhook-secret").text
    assert secret.startswith("whsec_")
    _shot(browser, tmp_path, "05-account-rotated")

    # The job list shows it completed; a phone-sized window gets the same page.
    browser.get(f"{base}/dashboard/jobs")
    assert _text(browser, f'tr[data-job="{job_id}"] [data-field="status"]') == "completed"
    _shot(browser, tmp_path, "06-jobs-list")
    browser.set_window_size(390, 844)
    _shot(browser, tmp_path, "07-jobs-phone")
    browser.set_window_size(1280, 900)
    _click(browser, "sign-out")
    assert browser.current_url == f"{base}/dashboard/login"

    # The operator signs in, sees the job across keys, creates a key and revokes it.
    _sign_in(browser, base, ADMIN)
    assert browser.current_url == f"{base}/dashboard/operator/jobs", browser.page_source
    assert job_id in browser.find_element(By.ID, "all-jobs").text
    _shot(browser, tmp_path, "08-operator-jobs")
    browser.get(f"{base}/dashboard/operator/keys")
    browser.find_element(By.ID, "key-name").send_keys("made-in-browser")
    rate = browser.find_element(By.ID, "key-rate")
    rate.clear()
    rate.send_keys("5")
    _click(browser, "create")
    new_key = browser.find_element(By.ID, "new-key").text
    assert new_key.startswith("sk_live_")
    _shot(browser, tmp_path, "09-operator-key-created")
    with httpx.Client(base_url=base, timeout=30) as client:
        allowed = client.get("/v2/jobs", headers=bearer(new_key))
        assert allowed.status_code == 200 and allowed.headers["x-ratelimit-limit"] == "5"

        browser.get(f"{base}/dashboard/operator/keys")
        row = next(
            r
            for r in browser.find_elements(By.CSS_SELECTOR, "#keys tbody tr")
            if "made-in-browser" in r.text
        )
        new_id = row.get_attribute("data-key")
        revoke = row.find_element(By.CSS_SELECTOR, '[data-action="revoke"]')

        def revoke_and_confirm() -> None:
            revoke.click()
            browser.switch_to.alert.accept()  # "Revoke made-in-browser? …"

        _navigate(browser, revoke_and_confirm)
        WebDriverWait(browser, 30).until(
            lambda d: "revoked" in _text(d, f'tr[data-key="{new_id}"] [data-field="state"]')
        )
        _shot(browser, tmp_path, "10-operator-key-revoked")

        refused = client.get("/v2/jobs", headers=bearer(new_key))
        assert refused.status_code == 401, refused.text
        assert "revoked" in refused.json()["error"]["message"]
