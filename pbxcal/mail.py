"""E-mail: the invitation a PBX admin sends a customer, through the ``[smtp]`` server.

What it does: ``send_invitation(smtp, to, url, language)`` builds a short plain-text
message (English or Dutch) with the invitation's URL and sends it with the standard
library's ``smtplib`` in a worker thread: STARTTLS when ``starttls`` is set (with
certificate checks), AUTH when a user name is given, the password read from
``password_file`` at send time. Errors become one-line ``MailError``s.

Why stdlib in a thread, not aiosmtplib: one message per invitation, sent rarely, does
not need an async SMTP client, and ``smtplib``/``email`` are maintained with Python
itself; ``aiosmtplib`` would be one more dependency for no measurable gain.

What it must not do: log, return or put into an error the password (or the invitation
URL: it is a credential for one extension); accept a header value with CR/LF.

Start reading at ``send_invitation``.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import TYPE_CHECKING

from pbxcal.errors import PbxcalError

if TYPE_CHECKING:
    from pbxcal.config import SmtpConfig

#: Seconds a connection to the mail server may take per step.
SMTP_TIMEOUT = 20.0

_TEXT = {
    "en": (
        "Link your calendar to your phone",
        "Hello,\n\n"
        "your telephone provider invites you to link your calendar to your phone "
        "extension. Appointments whose title is only a phone number then forward your "
        "calls to that number for their duration.\n\n"
        "Open this link to start (it works once and expires):\n\n{url}\n\n"
        "If you did not expect this message, you can ignore it.\n",
    ),
    "nl": (
        "Koppel uw agenda aan uw telefoon",
        "Hallo,\n\n"
        "uw telefonieaanbieder nodigt u uit om uw agenda aan uw toestel te koppelen. "
        "Afspraken waarvan de titel alleen een telefoonnummer is, schakelen uw "
        "gesprekken dan zolang door naar dat nummer.\n\n"
        "Open deze link om te beginnen (hij werkt één keer en verloopt):\n\n{url}\n\n"
        "Verwachtte u dit bericht niet? Dan kunt u het negeren.\n",
    ),
}


class MailError(PbxcalError):
    """The e-mail could not be sent (one line, never the password or the URL)."""


def invitation_message(sender: str, to: str, url: str, language: str) -> EmailMessage:
    """The invitation e-mail (``language`` en or nl; anything else is English)."""
    for value in (sender, to):
        if any(c in value for c in "\r\n") or "@" not in value:
            raise MailError("an e-mail address may not hold a line break and needs an @")
    subject, body = _TEXT.get(language, _TEXT["en"])
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    message.set_content(body.format(url=url))
    # after set_content, which drops every Content-* header set before it
    message["Content-Language"] = language if language in _TEXT else "en"
    return message


async def send_invitation(smtp: SmtpConfig, to: str, url: str, language: str = "en") -> None:
    """Send the invitation ``url`` to ``to``; ``MailError`` when the server refuses."""
    message = invitation_message(smtp.sender, to, url, language)
    await asyncio.to_thread(send_message, smtp, message)


def send_message(smtp: SmtpConfig, message: EmailMessage) -> None:
    """Send ``message`` through ``[smtp]`` (blocking: call it from a worker thread);
    ``MailError`` in one line when the server refuses or cannot be reached."""
    where = f"mail server {smtp.host}:{smtp.port}"
    password = _password(smtp) if smtp.username else None
    try:
        with smtplib.SMTP(smtp.host, smtp.port, timeout=SMTP_TIMEOUT) as client:
            if smtp.starttls:
                client.starttls(context=ssl.create_default_context())
            if smtp.username and password is not None:
                client.login(smtp.username, password)
            client.send_message(message)
    except smtplib.SMTPAuthenticationError:
        raise MailError(f"{where} refused the login of {smtp.username}") from None
    except smtplib.SMTPRecipientsRefused:
        raise MailError(f"{where} refused the recipient address") from None
    except smtplib.SMTPNotSupportedError as exc:
        raise MailError(f"{where}: {_first_line(str(exc))}") from None
    except smtplib.SMTPResponseException as exc:
        raise MailError(f"{where} answered {exc.smtp_code}") from None
    except (smtplib.SMTPException, ssl.SSLError, OSError) as exc:
        why = getattr(exc, "strerror", None) or type(exc).__name__
        raise MailError(f"cannot send through {where}: {why}") from None


def _password(smtp: SmtpConfig) -> str:
    if not smtp.password_file:
        raise MailError("[smtp] username is set but password_file is not")
    try:
        return Path(smtp.password_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not text"
        raise MailError(f"[smtp] password_file {smtp.password_file}: cannot read: {why}") from None


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "error"
