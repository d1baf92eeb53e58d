"""The chat page at `/` in a real headless Chromium against the real service.

Sign in (token field or dev user), stream a reply with tool calls, stop one,
drop the socket mid-reply, reload mid-reply. Each reply the page shows is
compared with what the service stored (`GET /api/history`).

With `RAYCHAT_SCREENSHOTS=DIR` set, the tests save the README's screenshots there.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.select import Select

from tests.browser import chromium, wait_for
from tests.integration.conftest import Service

pytestmark = pytest.mark.ray

LONG = "tell me a story in 400 words"
MESSAGES_JS = """
return Array.from(document.querySelectorAll('#messages .msg')).map((m) => ({
  role: m.classList.contains('user') ? 'user' : 'assistant',
  status: m.dataset.status,
  run_id: m.dataset.runId || null,
  text: Array.from(m.querySelectorAll('.text')).map((t) => t.textContent).join(''),
  tools: Array.from(m.querySelectorAll('.chip.tool')).map((c) => [c.dataset.tool, c.dataset.state]),
  handoffs: Array.from(m.querySelectorAll('.chip.handoff')).map((c) => c.textContent),
  note: (m.querySelector('.msg-note') || {}).textContent || '',
}));
"""


class ChatPage:
    """The chat page in one browser, seen through its DOM."""

    def __init__(self, driver: WebDriver, service: Service) -> None:
        self.driver = driver
        self.service = service

    def open(self) -> None:
        """Load the page with nothing stored (signed out)."""
        self.driver.get(f"{self.service.http}/")
        self.driver.execute_script("localStorage.clear()")
        self.driver.refresh()
        self.wait(lambda: self.visible("signin"), "the sign-in form")

    def find(self, element_id: str) -> Any:
        return self.driver.find_element(By.ID, element_id)

    def visible(self, element_id: str) -> bool:
        return bool(self.find(element_id).is_displayed())

    def wait(self, condition: Any, what: str, timeout_s: float = 20.0) -> Any:
        return wait_for(self.driver, condition, what, timeout_s)

    def sign_in_dev(self, user_id: str) -> None:
        self.wait(lambda: self.visible("dev-user"), "the dev user field")
        self.find("dev-user").send_keys(user_id)
        self.find("dev-submit").click()
        self.wait_connected()

    def sign_in_token(self, token: str) -> None:
        self.find("token-input").send_keys(token)
        self.find("token-submit").click()
        self.wait_connected()

    def status(self) -> str:
        return str(self.find("status").get_attribute("data-state"))

    def wait_connected(self) -> None:
        self.wait(lambda: self.visible("app") and self.status() == "connected", "connected")
        self.wait(lambda: self.find("send").is_enabled(), "the chat's history")

    def send(self, text: str) -> None:
        box = self.find("input")
        box.send_keys(text)
        self.find("send").click()

    def messages(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.driver.execute_script(MESSAGES_JS)
        return result

    def reply(self, index: int = -1) -> dict[str, Any] | None:
        """The `index`th assistant message (the last by default), if there is one."""
        replies = [m for m in self.messages() if m["role"] == "assistant"]
        try:
            return replies[index]
        except IndexError:
            return None

    def wait_reply(self, condition: Any, what: str, index: int = -1) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            reply = self.reply(index)
            return reply if reply is not None and condition(reply) else None

        result: dict[str, Any] = self.wait(check, what)
        return result

    def screenshot(self, name: str) -> None:
        folder = os.environ.get("RAYCHAT_SCREENSHOTS")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            self.driver.save_screenshot(str(Path(folder) / name))


def words(text: str) -> int:
    return len(text.split())


def stored_reply(
    service: Service, user_id: str, run_id: str, session_id: str = "default"
) -> dict[str, Any]:
    """One run's reply as the service stored it (`GET /api/history`)."""
    rows = service.history(user_id, session_id)
    return next(m for m in rows if m["run_id"] == run_id and m["role"] == "assistant")


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


@pytest.fixture
def page(browser: WebDriver, service: Service) -> ChatPage:
    chat = ChatPage(browser, service)
    chat.open()
    return chat


def new_user(name: str) -> str:
    """A user of its own for each test (the database is shared by the session)."""
    return f"{name}.{uuid.uuid4().hex[:6]}"


def test_page_assets_and_dev_token(service: Service) -> None:
    page = httpx.get(f"{service.http}/", timeout=30)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert 'src="/static/app.js"' in page.text
    for name, media in (("app.js", "text/javascript"), ("app.css", "text/css")):
        response = httpx.get(f"{service.http}/static/{name}", timeout=30)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(media)
    assert httpx.get(f"{service.http}/static/index.html", timeout=30).status_code == 404

    # The fixture's Serve listens on 127.0.0.1 and this test calls from this machine.
    assert httpx.get(f"{service.http}/api/dev-token", timeout=30).json() == {"available": True}
    bad = httpx.post(f"{service.http}/api/dev-token", json={"user_id": "no spaces"}, timeout=30)
    assert bad.status_code == 422
    issued = httpx.post(f"{service.http}/api/dev-token", json={"user_id": "dev-bob"}, timeout=30)
    token = issued.json()["token"]
    assert jwt.decode(token, options={"verify_signature": False})["sub"] == "dev-bob"
    history = httpx.get(
        f"{service.http}/api/history", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert history.status_code == 200


def test_reply_streams_with_tool_call_and_handoff(page: ChatPage, service: Service) -> None:
    user = new_user("alice")
    page.sign_in_dev(user)
    assert page.find("user-name").text == user

    page.send("remind me to water the plants")
    todo = page.wait_reply(lambda r: r["status"] == "completed", "the todo reply")
    assert todo["tools"] == [["add_todo", "done"]]
    assert todo["handoffs"] == ["Handed off to Organizer"]
    assert "water the plants" in todo["text"]

    page.send("tell me a story in 300 words")
    first = page.wait_reply(
        lambda r: r["status"] == "streaming" and words(r["text"]) >= 3, "the first words"
    )
    # The text grows on screen while the run is still going.
    page.wait_reply(
        lambda r: r["status"] == "streaming" and words(r["text"]) > words(first["text"]) + 40,
        "more words before the run ends",
    )
    page.screenshot("streaming-reply.png")
    done = page.wait_reply(lambda r: r["status"] == "completed", "the end of the story")
    assert words(done["text"]) == 300
    assert done["text"] == stored_reply(service, user, done["run_id"])["text"]


def test_stop_button_cancels_and_reject_refuses(page: ChatPage, service: Service) -> None:
    user = new_user("bob")
    page.sign_in_token(service.token(user))  # the token field
    page.send(LONG)
    page.wait_reply(lambda r: words(r["text"]) >= 3, "the first words")
    assert page.visible("stop")

    Select(page.find("on-busy")).select_by_value("reject")
    page.send("and another thing")
    page.wait(
        lambda: page.messages()[-1]["status"] == "failed", "the refused message", timeout_s=10
    )
    assert page.messages()[-1]["note"] == "Not sent: a reply is still running."

    page.find("stop").click()
    stopped = page.wait_reply(lambda r: r["status"] == "cancelled", "the stopped reply")
    assert words(stopped["text"]) < 400
    assert stopped["note"] == "Stopped"
    page.wait(lambda: not page.visible("stop"), "the stop button to go")
    row = stored_reply(service, user, stopped["run_id"])
    assert (row["status"], row["text"]) == ("cancelled", stopped["text"])
    Select(page.find("on-busy")).select_by_value("enqueue")  # stored in localStorage


def test_dropped_socket_reconnects_and_reply_finishes(page: ChatPage, service: Service) -> None:
    user = new_user("carol")
    page.sign_in_dev(user)
    page.send(LONG)
    page.wait_reply(lambda r: words(r["text"]) >= 3, "the first words")
    assert page.driver.execute_script("return window.raychat.connects()") == 1

    page.driver.execute_script("window.raychat.dropSocket()")  # nothing more is read from it
    dropped_at = page.reply()
    assert dropped_at is not None and dropped_at["status"] == "streaming"
    page.wait(
        lambda: page.driver.execute_script("return window.raychat.connects()") == 2, "the reconnect"
    )
    # The new socket resumes the run: it streams on (not only its final event arrives).
    page.wait_reply(
        lambda r: r["status"] == "streaming" and words(r["text"]) > words(dropped_at["text"]),
        "the reply streaming on after the reconnect",
    )
    done = page.wait_reply(lambda r: r["status"] == "completed", "the reply's end")
    assert words(done["text"]) == 400
    assert done["text"] == stored_reply(service, user, done["run_id"])["text"]


def test_reload_shows_history_sessions_and_finishes_reply(page: ChatPage, service: Service) -> None:
    user = new_user("dave")
    page.sign_in_dev(user)
    page.send("I prefer tea over coffee")
    page.wait_reply(lambda r: r["status"] == "completed", "the first chat's reply")
    page.find("new-chat").click()
    page.send("what are my todos")
    page.wait_reply(lambda r: r["status"] == "completed", "the second chat's reply")
    page.find("new-chat").click()
    page.send(LONG)
    page.wait_reply(lambda r: words(r["text"]) >= 3, "the first words")
    session = page.driver.execute_script(
        "return document.querySelector('.session.active').dataset.sessionId"
    )

    page.driver.refresh()  # mid-reply: history shows it streaming, then it resumes
    page.wait_connected()
    shown = page.reply()
    assert shown is not None and shown["status"] == "streaming"
    page.wait_reply(
        lambda r: r["status"] == "streaming" and words(r["text"]) > words(shown["text"]),
        "the reply streaming on after the reload",
    )
    done = page.wait_reply(lambda r: r["status"] == "completed", "the reply's end after reload")
    assert [m["role"] for m in page.messages()] == ["user", "assistant"]
    assert page.messages()[0]["text"] == LONG
    assert done["text"] == stored_reply(service, user, done["run_id"], session)["text"]
    assert words(done["text"]) == 400
    page.screenshot("sessions.png")

    titles = [e.text for e in page.driver.find_elements(By.CSS_SELECTOR, ".session-title")]
    assert titles == [LONG, "what are my todos", "I prefer tea over coffee"]
    page.driver.find_elements(By.CSS_SELECTOR, ".session")[2].click()
    page.wait(lambda: len(page.messages()) == 2, "the first chat's history")
    first = page.messages()
    assert first[0]["text"] == "I prefer tea over coffee"
    assert first[1]["status"] == "completed" and "tea over coffee" in first[1]["text"]
