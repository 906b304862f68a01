"""The fake's SOAP autodiscover endpoint (``POST /autodiscover/autodiscover.svc``,
``GetUserSettings``), answered as Exchange 2016 does: for each requested mailbox the
user may open, ``UserSettings`` with ``ExternalEwsUrl`` (and ``InternalEwsUrl``,
``AutoDiscoverSMTPAddress``, ``EwsSupportedSchemas``); ``InvalidUser`` for any other.

Pure string building over the request; the server decides who may open what (``allowed``).
Start reading at ``user_settings``.
"""

from __future__ import annotations

from collections.abc import Callable
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape

ANS = "http://schemas.microsoft.com/exchange/2010/Autodiscover"
SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
WSA = "http://www.w3.org/2005/08/addressing"
ACTION = "http://schemas.microsoft.com/exchange/2010/Autodiscover/Autodiscover/"


def requested_users(body: bytes) -> list[str] | None:
    """The mailboxes a GetUserSettings request names (None: not such a request)."""
    try:
        root = ET.fromstring(body)  # noqa: S314 - a loopback test server; the client is exchangelib
    except ET.ParseError:
        return None
    request = root.find(f"{{{SOAP}}}Body/{{{ANS}}}GetUserSettingsRequestMessage")
    if request is None:
        return None
    return [(m.text or "").strip().lower() for m in request.iter(f"{{{ANS}}}Mailbox")]


def user_settings(users: list[str], ews_url: str, allowed: Callable[[str], bool]) -> str:
    responses = []
    for user in users:
        if not allowed(user):
            responses.append(
                "<UserResponse><ErrorCode>InvalidUser</ErrorCode>"
                f"<ErrorMessage>Invalid user: '{escape(user)}'</ErrorMessage>"
                '<RedirectTarget i:nil="true"/><UserSettingErrors/><UserSettings/>'
                "</UserResponse>"
            )
            continue
        settings = {
            "AutoDiscoverSMTPAddress": user,
            "ExternalEwsUrl": ews_url,
            "InternalEwsUrl": ews_url,
            "EwsSupportedSchemas": "Exchange2007, Exchange2007_SP1, Exchange2010, "
            "Exchange2010_SP1, Exchange2010_SP2, Exchange2013, Exchange2013_SP1, Exchange2016",
        }
        items = "".join(
            f'<UserSetting i:type="StringSetting"><Name>{name}</Name>'
            f"<Value>{escape(value)}</Value></UserSetting>"
            for name, value in settings.items()
        )
        responses.append(
            "<UserResponse><ErrorCode>NoError</ErrorCode><ErrorMessage>No error.</ErrorMessage>"
            f'<RedirectTarget i:nil="true"/><UserSettingErrors/><UserSettings>{items}'
            "</UserSettings></UserResponse>"
        )
    return (
        f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP}" xmlns:a="{WSA}">'
        f'<s:Header><a:Action s:mustUnderstand="1">{ACTION}GetUserSettingsResponse</a:Action>'
        f'<h:ServerVersionInfo xmlns:h="{ANS}" '
        'xmlns:i="http://www.w3.org/2001/XMLSchema-instance">'
        "<h:MajorVersion>15</h:MajorVersion><h:MinorVersion>1</h:MinorVersion>"
        "<h:MajorBuildNumber>2507</h:MajorBuildNumber><h:MinorBuildNumber>6</h:MinorBuildNumber>"
        "<h:Version>Exchange2015</h:Version></h:ServerVersionInfo></s:Header>"
        f'<s:Body><GetUserSettingsResponseMessage xmlns="{ANS}">'
        '<Response xmlns:i="http://www.w3.org/2001/XMLSchema-instance">'
        "<ErrorCode>NoError</ErrorCode><ErrorMessage/>"
        f"<UserResponses>{''.join(responses)}</UserResponses></Response>"
        "</GetUserSettingsResponseMessage></s:Body></s:Envelope>"
    )
