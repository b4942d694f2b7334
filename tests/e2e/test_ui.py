"""The jobs page (/ui) in headless Chromium against the running stack: a job submitted through
the API appears, reaches SUCCESS live, and its result opens in the page.

Debian's chromium and chromedriver (`make install`); selenium drives them, and never downloads
a browser or a driver. NIMBUS_UI_SCREENSHOT=docs/ui.png saves the README's screenshot.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from nimbus.auth import key_entry, new_key
from nimbus.stack import Stack
from tests.conftest import IRIS_SETOSA, IRIS_VIRGINICA, stack_settings

pytestmark = pytest.mark.e2e

WAIT = 60.0  # seconds for the page to show what the API already says (bounded)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    chromium = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail("chromium and chromedriver are not on PATH: run `make install`")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager: never download anything
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # as root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--hide-scrollbars",
    ):
        options.add_argument(arg)
    session = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    session.set_page_load_timeout(30)
    try:
        yield session
    finally:
        session.quit()


def _row(browser: WebDriver, job_id: str):
    rows = browser.find_elements(By.CSS_SELECTOR, f'tr.job[data-job-id="{job_id}"]')
    return rows[0] if rows else None


def _status(browser: WebDriver, job_id: str) -> str | None:
    row = _row(browser, job_id)
    return row.get_attribute("data-status") if row is not None else None


def test_a_submitted_job_appears_finishes_and_shows_its_result(
    stack: Stack, browser: WebDriver, tmp_path: Path
):
    base = stack.gateway_url
    items = [IRIS_SETOSA, IRIS_VIRGINICA] * 60
    earlier = requests.post(f"{base}/v1/batch", json=items[:10], timeout=10)
    assert earlier.status_code == 202, earlier.text
    browser.get(f"{base}/ui")
    submitted = requests.post(f"{base}/v1/batch", json=items, timeout=10)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["job_id"]

    # It appears without a reload (the page polls), and reaches SUCCESS.
    WebDriverWait(browser, WAIT).until(lambda b: _row(b, job_id) is not None)
    WebDriverWait(browser, WAIT).until(lambda b: _status(b, job_id) == "SUCCESS")
    row = _row(browser, job_id)
    assert row is not None
    assert row.find_element(By.CSS_SELECTOR, ".status").text == "SUCCESS"
    assert row.find_element(By.CSS_SELECTOR, ".progress-text").text.strip() == "120/120"
    assert row.find_element(By.CSS_SELECTOR, ".model").text == "iris v1"
    # Newest first: the job submitted last is the first row.
    first = browser.find_element(By.CSS_SELECTOR, "tr.job")
    assert first.get_attribute("data-job-id") == job_id

    row.click()
    WebDriverWait(browser, WAIT).until(
        lambda b: len(b.find_elements(By.CSS_SELECTOR, "#result-table tr.result-row")) > 0
    )
    assert job_id in browser.find_element(By.ID, "result-title").text
    results = browser.find_elements(By.CSS_SELECTOR, "#result-table tr.result-row")
    first_page = requests.get(f"{base}/v1/batch/{job_id}", timeout=5).json()["result"]
    assert len(results) == len(first_page)
    predictions = [r.find_element(By.CSS_SELECTOR, ".prediction").text for r in results[:2]]
    assert predictions == ["0", "2"]  # setosa, virginica
    assert "iris v1" in browser.find_element(By.ID, "result-meta").text

    browser.save_screenshot(str(tmp_path / "ui.png"))
    target = os.environ.get("NIMBUS_UI_SCREENSHOT")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "ui.png", target)


def test_the_page_loads_nothing_from_elsewhere(stack: Stack, browser: WebDriver):
    browser.get(f"{stack.gateway_url}/ui")
    WebDriverWait(browser, WAIT).until(
        lambda b: b.find_element(By.ID, "message").text not in {"", "Loading…"}
    )
    urls = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert urls, "the page loaded no script or style"
    assert all(url.startswith(stack.gateway_url) for url in urls), urls
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


def test_the_docs_page_renders_every_operation_of_the_spec(stack: Stack, browser: WebDriver):
    spec = requests.get(f"{stack.gateway_url}/openapi.json", timeout=5).json()
    operation_ids = [
        operation["operationId"]
        for item in spec["paths"].values()
        for method, operation in item.items()
        if method in {"get", "post", "delete"}
    ]
    browser.get(f"{stack.gateway_url}/docs")
    WebDriverWait(browser, WAIT).until(lambda b: b.find_elements(By.CSS_SELECTOR, "details.op"))
    for operation_id in operation_ids:
        assert browser.find_elements(By.ID, operation_id), operation_id
    assert browser.find_element(By.ID, "title").text == spec["info"]["title"]


@pytest.fixture(scope="module")
def keyed_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, dict[str, str]]]:
    """A stack of its own with API keys on: alice's and bob's."""
    keys = {name: new_key() for name in ("alice", "bob")}
    entries = ",".join(key_entry(name, key) for name, key in keys.items())
    settings = stack_settings(tmp_path_factory.mktemp("keyed"), api_keys=entries)
    with Stack(settings) as running:
        yield running, keys


def test_with_keys_on_the_page_asks_for_one_and_shows_only_its_jobs(
    keyed_stack: tuple[Stack, dict[str, str]], browser: WebDriver
):
    stack, keys = keyed_stack
    base = stack.gateway_url
    alices = requests.post(
        f"{base}/v1/batch",
        json=[IRIS_SETOSA],
        headers={"Authorization": f"Bearer {keys['alice']}"},
        timeout=10,
    )
    bobs = requests.post(
        f"{base}/v1/batch", json=[IRIS_VIRGINICA], headers={"X-API-Key": keys["bob"]}, timeout=10
    )
    assert alices.status_code == bobs.status_code == 202, (alices.text, bobs.text)

    browser.get(f"{base}/ui")
    browser.execute_script("localStorage.clear()")
    browser.refresh()
    form = browser.find_element(By.ID, "key-form")
    WebDriverWait(browser, WAIT).until(lambda b: form.is_displayed())
    browser.find_element(By.ID, "key-input").send_keys(keys["alice"])
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

    alice_job = alices.json()["job_id"]
    WebDriverWait(browser, WAIT).until(lambda b: _row(b, alice_job) is not None)
    assert not form.is_displayed()
    assert _row(browser, bobs.json()["job_id"]) is None  # a job is its key's only
    assert browser.execute_script("return localStorage.getItem('nimbus.apiKey')") == keys["alice"]

    # A refused key brings the form back, saying so.
    browser.execute_script("localStorage.setItem('nimbus.apiKey', 'nimbus_wrong')")
    browser.refresh()
    WebDriverWait(browser, WAIT).until(
        lambda b: b.find_element(By.ID, "key-error").text == "That key was refused."
    )
    browser.find_element(By.ID, "forget-key").click()
    WebDriverWait(browser, WAIT).until(
        lambda b: b.execute_script("return localStorage.getItem('nimbus.apiKey')") is None
    )
