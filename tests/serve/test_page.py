"""The chat page (``GET /``) driven in headless Chromium: a streamed reply, a thumbs-up in the store, API keys.

Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them). Selenium is given both paths, so its
Selenium Manager never looks for, nor downloads, a browser or a driver.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from lmpo.serve.store import DB_NAME
from tests.serve.conftest import LiveServer, copy_run, start_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--window-size=1280,900")
WAIT_S = 120.0  # a slow 2-core machine: the browser, the model and the server share it
KEY = "page-test-key-0123"

# Every text the page puts into an assistant bubble, in order (a streamed reply grows in several steps).
RECORD_REPLY_STATES = """
window.replyStates = [];
new MutationObserver((records) => {
  for (const r of records) {
    if (r.target.matches && r.target.matches('.assistant .content')) {
      for (const node of r.addedNodes) window.replyStates.push(node.data);
    }
  }
}).observe(document.getElementById('log'), {childList: true, subtree: true});
"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Chromium with a fresh profile."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"the page test needs Debian's chromium and chromium-driver, and {' and '.join(missing)} "
                    "is missing: run `make browser` (or apt-get install chromium chromium-driver)")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in (*CHROMIUM_ARGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> Any:
    """``condition``'s first truthy value; on timeout, a failure that shows the page and its console."""
    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until(condition)
    except TimeoutException:
        page = driver.find_element(By.TAG_NAME, "body").text
        console = "\n".join(entry["message"] for entry in driver.get_log("browser"))
        pytest.fail(f"timed out after {WAIT_S:.0f} s waiting for {what}\n--- page:\n{page}\n--- console:\n{console}")


def text_of(element: WebElement) -> str:
    """The exact text of an element (Selenium's ``.text`` trims and folds white space)."""
    return str(element.get_property("textContent"))


def finished_replies(driver: WebDriver, count: int) -> list[WebElement]:
    """Wait for ``count`` finished assistant replies."""
    def done(d: WebDriver) -> list[WebElement] | None:
        replies = d.find_elements(By.CSS_SELECTOR, ".assistant[data-state='done']")
        return replies if len(replies) >= count else None

    return wait_for(driver, done, f"{count} finished replies")


def model_id(server: LiveServer, key: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return str(httpx.get(f"{server.url}/v1/models", headers=headers, timeout=30).json()["data"][0]["id"])


def completion(run_dir: Path, completion_id: str) -> tuple[str, list[dict[str, str]]]:
    """The recorded reply and request messages of choice 0 of a completion."""
    with contextlib.closing(sqlite3.connect(run_dir / DB_NAME)) as db:
        row = db.execute("SELECT reply, messages FROM completions WHERE id = ? AND choice = 0",
                         (completion_id,)).fetchone()
    assert row is not None, f"no completion {completion_id} in the store"
    return row[0], json.loads(row[1])


def type_message(driver: WebDriver, text: str) -> WebElement:
    box = driver.find_element(By.ID, "message")
    box.clear()
    box.send_keys(text)
    return box


def test_page_streams_a_reply_and_records_a_thumbs_up(server: LiveServer, browser: WebDriver) -> None:
    model = model_id(server)
    browser.get(f"{server.url}/")
    wait_for(browser, lambda d: text_of(d.find_element(By.ID, "model")) == model, f"the model id {model!r}")
    browser.execute_script(RECORD_REPLY_STATES)

    # 1. a message, sent with the button; the reply streams into its bubble
    type_message(browser, "hello there")
    browser.find_element(By.ID, "send").click()
    [reply] = finished_replies(browser, 1)
    shown = text_of(reply.find_element(By.CSS_SELECTOR, ".content"))
    completion_id = reply.get_attribute("data-completion-id")
    assert completion_id and completion_id.startswith("chatcmpl-")
    assert [text_of(e) for e in browser.find_elements(By.CSS_SELECTOR, ".user .content")] == ["hello there"]
    states = browser.execute_script("return window.replyStates")
    assert len(states) >= 2 and states[-1] == shown, f"the reply did not grow as it streamed: {states!r}"
    assert all(shown.startswith(s) for s in states), states
    assert browser.find_elements(By.CSS_SELECTOR, ".error") == []

    # 2. thumbs up: recorded, shown as chosen, both buttons disabled
    up = reply.find_element(By.CSS_SELECTOR, "button.thumb-up")
    down = reply.find_element(By.CSS_SELECTOR, "button.thumb-down")
    up.click()
    wait_for(browser, lambda d: reply.get_attribute("data-rated") == "up", "the rating to be recorded")
    assert "chosen" in (up.get_attribute("class") or "") and "chosen" not in (down.get_attribute("class") or "")
    assert not up.is_enabled() and not down.is_enabled()
    assert "recorded" in reply.find_element(By.CSS_SELECTOR, ".rating-status").text
    with contextlib.closing(sqlite3.connect(server.run_dir / DB_NAME)) as db:
        rated = db.execute("SELECT c.id, c.choice, r.thumb FROM completions c JOIN ratings r "
                           "ON r.completion_id = c.id AND r.choice = c.choice WHERE c.reply = ?", (shown,)).fetchall()
    assert rated == [(completion_id, 0, 1)]

    # 3. a second message, sent with Enter: the request carries the whole conversation
    type_message(browser, "how are you").send_keys(Keys.ENTER)
    second = finished_replies(browser, 2)[1]
    reply2, messages = completion(server.run_dir, str(second.get_attribute("data-completion-id")))
    assert reply2 == text_of(second.find_element(By.CSS_SELECTOR, ".content"))
    first_turn = [{"role": "assistant", "content": shown}] if shown.strip() else []  # the API refuses blank ones
    assert messages == [{"role": "user", "content": "hello there"}, *first_turn,
                        {"role": "user", "content": "how are you"}]

    # 4. a new conversation starts from nothing
    browser.find_element(By.ID, "new-chat").click()
    assert browser.find_elements(By.CSS_SELECTOR, "#log .message") == []
    type_message(browser, "good morning").send_keys(Keys.ENTER)
    third = finished_replies(browser, 1)[0]
    _, messages = completion(server.run_dir, str(third.get_attribute("data-completion-id")))
    assert messages == [{"role": "user", "content": "good morning"}]


def test_page_asks_for_the_api_key_and_works_with_it(text_run: Path, tmp_path: Path, browser: WebDriver) -> None:
    live = start_server(copy_run(text_run, tmp_path / "run"), "--api-key", KEY)
    try:
        model = model_id(live, KEY)
        browser.get(f"{live.url}/")  # the page itself needs no key
        status = browser.find_element(By.ID, "status")
        wait_for(browser, lambda _: "needs an API key" in status.text, "the page to say that a key is needed")

        # 1. without a key: the message fails visibly, with the key-needed message, and is not lost
        type_message(browser, "hello there").send_keys(Keys.ENTER)
        error = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".error"), "an error")[-1]
        assert "needs an API key" in error.text, error.text
        assert browser.find_elements(By.CSS_SELECTOR, ".assistant") == []
        assert "failed" in (browser.find_element(By.CSS_SELECTOR, ".user").get_attribute("class") or "")
        assert browser.find_element(By.ID, "message").get_property("value") == "hello there"

        # 2. a wrong key is refused as such
        browser.find_element(By.ID, "api-key").send_keys("not-the-key-42")
        browser.find_element(By.ID, "send").click()
        wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".error")) == 2, "a second error")
        assert "did not accept this API key" in browser.find_elements(By.CSS_SELECTOR, ".error")[-1].text

        # 3. with the key: the reply arrives, and was asked without the failed messages
        key_field = browser.find_element(By.ID, "api-key")
        key_field.clear()
        key_field.send_keys(KEY)
        browser.find_element(By.ID, "send").click()
        [reply] = finished_replies(browser, 1)
        shown, messages = completion(live.run_dir, str(reply.get_attribute("data-completion-id")))
        assert shown == text_of(reply.find_element(By.CSS_SELECTOR, ".content"))
        assert messages == [{"role": "user", "content": "hello there"}]
        assert text_of(browser.find_element(By.ID, "model")) == model

        # 4. the key is remembered: a reload needs no typing
        assert browser.execute_script("return localStorage.getItem('lmpo.apiKey')") == KEY
        browser.refresh()
        wait_for(browser, lambda d: text_of(d.find_element(By.ID, "model")) == model, "the model id after a reload")
        assert browser.find_element(By.ID, "api-key").get_property("value") == KEY
        assert browser.find_element(By.ID, "status").text == ""
    finally:
        live.stop()
