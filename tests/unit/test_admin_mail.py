"""``pbxcal.mail``: the invitation e-mail through a real SMTP server (aiosmtpd on
loopback), with AUTH from ``password_file``; the password never reaches an error."""

from __future__ import annotations

import email
import queue
from collections.abc import Iterator
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from pbxcal.config import SmtpConfig
from pbxcal.mail import MailError, invitation_message, send_invitation
from pbxcal.testing.ports import free_port

PASSWORD = "s3cret-smtp-pw"


class Inbox:
    def __init__(self) -> None:
        self.messages: queue.Queue[tuple[list[str], bytes]] = queue.Queue()
        self.logins: list[str] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.put((list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 OK"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data.password == PASSWORD.encode()
        if isinstance(data, LoginPassword):
            self.logins.append(data.login.decode())
        return AuthResult(success=ok, handled=False)


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    handler = Inbox()
    controller = Controller(
        handler, hostname="127.0.0.1", port=free_port(), authenticator=handler.authenticate,
        auth_require_tls=False,
    )  # fmt: skip
    controller.start()
    try:
        yield handler, controller.port
    finally:
        controller.stop()


def smtp(port: int, tmp_path: Path, password: str = PASSWORD) -> SmtpConfig:
    secret = tmp_path / "smtp.pw"
    secret.write_text(password + "\n")
    return SmtpConfig(
        host="127.0.0.1", sender="pbxcal@example.com", port=port, username="mailer",
        password_file=str(secret),
    )  # fmt: skip


async def test_invitation_is_sent_with_auth(inbox: tuple[Inbox, int], tmp_path: Path) -> None:
    handler, port = inbox
    url = "https://pbx.example.com/i/abc"
    await send_invitation(smtp(port, tmp_path), "anna@example.com", url, "nl")
    recipients, raw = handler.messages.get(timeout=10)
    message = email.message_from_bytes(raw, policy=default_policy)
    assert recipients == ["anna@example.com"] and handler.logins == ["mailer"]
    assert message["Subject"] == "Koppel uw agenda aan uw telefoon"
    assert message["Content-Language"] == "nl"
    assert url in message.get_content()


async def test_a_refused_login_names_the_user_never_the_password(
    inbox: tuple[Inbox, int], tmp_path: Path
) -> None:
    _, port = inbox
    with pytest.raises(MailError) as refused:
        await send_invitation(smtp(port, tmp_path, "wrong-pw"), "a@example.com", "u", "en")
    assert "refused the login of mailer" in str(refused.value)
    assert "wrong-pw" not in str(refused.value) and "\n" not in str(refused.value)


async def test_unreachable_server_is_one_line(tmp_path: Path) -> None:
    closed = SmtpConfig(host="127.0.0.1", sender="pbxcal@example.com", port=1)
    with pytest.raises(MailError, match=r"cannot send through mail server 127\.0\.0\.1:1"):
        await send_invitation(closed, "a@example.com", "https://x/i/t", "en")


def test_message_languages_and_header_injection() -> None:
    english = invitation_message("pbxcal@example.com", "a@example.com", "https://x/i/t", "de")
    assert english["Subject"] == "Link your calendar to your phone"
    assert english["Content-Language"] == "en"
    for bad in ("a@example.com\r\nBcc: evil@example.com", "no-at-sign"):
        with pytest.raises(MailError):
            invitation_message("pbxcal@example.com", bad, "https://x/i/t", "en")
