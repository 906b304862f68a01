"""SOAP shapes the fake answers with, as Exchange 2016 writes them: the envelope with its
``ServerVersionInfo`` header, response messages, error messages and SOAP faults (one of
them ``ErrorServerBusy`` with ``BackOffMilliseconds``), item and folder references.

Pure string building, no state. Start reading at ``envelope``.
"""

from __future__ import annotations

import base64
from xml.sax.saxutils import escape, quoteattr

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"
E = "http://schemas.microsoft.com/exchange/services/2006/errors"


class Refused(Exception):
    """An EWS error response message (``ResponseClass="Error"``) for the operation."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(code)
        self.code = code
        self.text = text


def ref(tag: str, ref_id: str, change_key: str) -> str:
    return f"<t:{tag} Id={quoteattr(ref_id)} ChangeKey={quoteattr(change_key)}/>"


def folder_id(mailbox: str, name: str) -> str:
    return base64.b64encode(f"fake-folder:{mailbox}:{name}".encode()).decode()


def server_version_header() -> str:
    return (
        '<h:ServerVersionInfo MajorVersion="15" MinorVersion="1" '
        'MajorBuildNumber="2507" MinorBuildNumber="6" '
        f'Version="V2017_07_11" xmlns:h="{T}" xmlns="{T}" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"/>'
    )


def envelope(response: str, messages: str) -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<s:Envelope xmlns:s="{SOAP}"><s:Header>{server_version_header()}</s:Header>'
        '<s:Body xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema">'
        f'<m:{response} xmlns:m="{M}" xmlns:t="{T}">'
        f"<m:ResponseMessages>{messages}</m:ResponseMessages></m:{response}>"
        "</s:Body></s:Envelope>"
    )


def success(tag: str, inner: str = "") -> str:
    return (
        f'<m:{tag} ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>'
        f"{inner}</m:{tag}>"
    )


def error_message(tag: str, code: str, text: str, tail: str = "") -> str:
    return (
        f'<m:{tag} ResponseClass="Error"><m:MessageText>{escape(text)}</m:MessageText>'
        f"<m:ResponseCode>{code}</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>"
        f"{tail}</m:{tag}>"
    )


def fault(code: str, text: str, detail_code: str | None = None) -> str:
    detail = (
        f'<detail><e:ResponseCode xmlns:e="{E}">{detail_code}</e:ResponseCode>'
        f'<e:Message xmlns:e="{E}">{escape(text)}</e:Message></detail>'
        if detail_code
        else ""
    )
    return (
        f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP}"><s:Body><s:Fault>'
        f'<faultcode xmlns:a="{T}">{code}</faultcode>'
        f'<faultstring xml:lang="en-US">{escape(text)}</faultstring>{detail}'
        "</s:Fault></s:Body></s:Envelope>"
    )


def busy_fault(back_off_ms: int | None) -> str:
    text = "The server cannot service this request right now. Try again later."
    return (
        f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP}"><s:Body><s:Fault>'
        f'<faultcode xmlns:a="{T}">a:ErrorServerBusy</faultcode>'
        f'<faultstring xml:lang="en-US">{text}</faultstring>'
        f'<detail><e:ResponseCode xmlns:e="{E}">ErrorServerBusy</e:ResponseCode>'
        f'<e:Message xmlns:e="{E}">{text}</e:Message>'
        + (
            f'<t:MessageXml xmlns:t="{T}">'
            f'<t:Value Name="BackOffMilliseconds">{back_off_ms}</t:Value></t:MessageXml>'
            if back_off_ms is not None
            else ""
        )
        + "</detail></s:Fault></s:Body></s:Envelope>"
    )
