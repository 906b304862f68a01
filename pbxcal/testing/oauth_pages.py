"""The sign-in page the provider fakes show in a real browser (tests of the portal).

A provider's authorization endpoint shows a page where the user picks an account and
allows or denies access; the browser is then sent back to the redirect URI with a code
(or ``error=access_denied``) and the ``state``. ``sign_in_page(query, accounts, ...)``
renders such a page (no JavaScript: a form that POSTs the authorization request back
in hidden fields, one radio button per account, an Allow and a Deny button);
``read_sign_in_form(body)`` reads the submitted form back into the authorization
request, the chosen account and whether it was allowed. ``FakeGoogle`` (``/auth``) and
``FakeGraph`` (``/{tenant}/oauth2/v2.0/authorize``) use these; what a code means is up to
each fake.

Must not do: be used outside tests (it trusts whatever the form says). Start reading at
``sign_in_page``.
"""

from __future__ import annotations

import html
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

#: The accounts a fake's sign-in page offers unless told otherwise.
DEFAULT_ACCOUNTS = ("anna@example.com", "bob@example.com")
_ACCOUNT_FIELD = "fake_account"
_ANSWER_FIELD = "fake_answer"


@dataclass(frozen=True)
class SignInAnswer:
    """What the user did on the page: the original authorization request's parameters,
    the account picked, and whether access was allowed."""

    request: dict[str, str]
    account: str
    allowed: bool


def sign_in_page(
    query: Mapping[str, str], accounts: Iterable[str], *, action: str, provider: str
) -> bytes:
    """The HTML page for the authorization request ``query`` (UTF-8)."""
    hidden = "".join(
        f'<input type="hidden" name="{html.escape(name)}" value="{html.escape(value)}">'
        for name, value in query.items()
        if name not in (_ACCOUNT_FIELD, _ANSWER_FIELD)
    )
    choices = "".join(
        f'<p><label><input type="radio" name="{_ACCOUNT_FIELD}" value="{html.escape(account)}"'
        f'{" checked" if index == 0 else ""}> {html.escape(account)}</label></p>'
        for index, account in enumerate(accounts)
    )
    client = html.escape(query.get("client_id", "?"))
    scopes = html.escape(query.get("scope", ""))
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Sign in - {html.escape(provider)} (fake)</title></head><body>"
        f"<h1>Sign in with {html.escape(provider)}</h1>"
        f"<p>The application <b>{client}</b> asks to read: <code>{scopes}</code></p>"
        f'<form method="post" action="{html.escape(action)}">{hidden}'
        f"<fieldset><legend>Choose an account</legend>{choices}</fieldset>"
        f'<button type="submit" name="{_ANSWER_FIELD}" value="allow">Allow</button> '
        f'<button type="submit" name="{_ANSWER_FIELD}" value="deny">Deny</button>'
        "</form></body></html>"
    )
    return page.encode("utf-8")


def read_sign_in_form(body: str) -> SignInAnswer:
    """The submitted form of ``sign_in_page`` (``application/x-www-form-urlencoded``)."""
    fields = dict(urllib.parse.parse_qsl(body, keep_blank_values=True))
    account = fields.pop(_ACCOUNT_FIELD, "")
    allowed = fields.pop(_ANSWER_FIELD, "") == "allow"
    return SignInAnswer(fields, account, allowed)


def redirect_target(request: Mapping[str, str], answer: Mapping[str, str]) -> str:
    """``request["redirect_uri"]`` with ``answer`` added to its query."""
    redirect = request["redirect_uri"]
    separator = "&" if urllib.parse.urlsplit(redirect).query else "?"
    return f"{redirect}{separator}{urllib.parse.urlencode(dict(answer))}"
