"""A protocol-level fake of an on-premises Exchange server's EWS endpoint, for the real
exchangelib and ``pbxcal.calendars.ews``.

``FakeEws`` is an HTTP server (HTTPS with ``tls=True``: a self-signed certificate made at
start, ``ca_file`` is the file to trust) on a free loopback port answering ``POST
/EWS/Exchange.asmx`` with SOAP shaped like Exchange 2016's (``m:``/``t:`` namespaces,
``ResponseClass``/``ResponseCode``, ``ServerVersionInfo`` header), for the operations
exchangelib sends to read a calendar:

* ``GetFolder`` for the distinguished folders ``root`` and ``calendar``;
* ``SyncFolderItems`` (IdOnly + ``item:UID``): ``t:Create``/``t:Update``/``t:Delete``
  changes since the sync state, ``MaxChangesReturned`` paging with
  ``IncludesLastItemInRange``; a sync state is ``base64("fake-ews:<mailbox>:<version>")``,
  ``expire_sync_states()`` makes every one issued before refused with
  ``ErrorInvalidSyncStateData``;
* ``GetItem`` with ``item:MimeContent``: the stored VCALENDAR, base64, as Exchange
  exports a calendar item (a recurring master carries its RRULE, EXDATEs of deleted
  occurrences and its modified occurrences as VEVENTs with RECURRENCE-ID).

Authentication: HTTP basic (``add_user(name, password)``; a wrong or missing password →
401) and, with ``ntlm=True``, NTLM (the real handshake, checked by pyspnego's acceptor
against ``ntlm_user_file``; the connection stays authenticated, as with IIS). Each user
may open its own mailbox (its name is the address) or, when ``allow_impersonation(user)``
was called, any mailbox named in an ``ExchangeImpersonation`` SOAP header; without that
right an impersonation is answered ``ErrorImpersonateUserDenied``, and a request naming
another mailbox ``ErrorAccessDenied``. ``fail_next(n, back_off_ms)`` answers the next
``n`` requests with the SOAP fault ``ErrorServerBusy`` carrying ``BackOffMilliseconds``.
``requests`` logs every request (operation, authenticated user, impersonated address,
body).

Mailboxes are edited from the test: ``put_item(mailbox, uid, vcalendar)`` (one item per UID;
an edit keeps the item id), ``delete_item(mailbox, uid)``; each edit bumps the version.

Must not do: pretend to be complete, or be used outside tests.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import os
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape, quoteattr

import spnego
from spnego.exceptions import SpnegoError

from pbxcal.testing.graph_fake import _certificate

__all__ = ["FakeEws", "LoggedRequest"]

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"
E = "http://schemas.microsoft.com/exchange/services/2006/errors"


@dataclass(frozen=True)
class LoggedRequest:
    """One request as the fake saw it."""

    operation: str
    user: str | None
    impersonated: str | None
    body: str


@dataclass
class _Item:
    item_id: str
    uid: str
    ical: str
    change_key: int
    created: int
    updated: int
    deleted: int | None = None
    cancelled: bool = False
    free_busy: str = "Busy"


@dataclass
class _Mailbox:
    items: dict[str, _Item] = field(default_factory=dict)  # by UID
    tombstones: list[_Item] = field(default_factory=list)  # deleted, then created again


class _Refused(Exception):
    def __init__(self, code: str, text: str) -> None:
        super().__init__(code)
        self.code = code
        self.text = text


class FakeEws:
    """See the module docstring."""

    def __init__(self, *, tls: bool = False, ntlm: bool = False) -> None:
        self._tls = tls
        self._ntlm_file: str | None = None
        self._ntlm = ntlm
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._lock = threading.Lock()
        self._users: dict[str, str] = {}
        self._impersonators: set[str] = set()
        self._mailboxes: dict[str, _Mailbox] = {}
        self._version = 0
        self._state_floor = 0
        self._ids = itertools.count(1)
        self._busy: list[int | None] = []
        self.requests: list[LoggedRequest] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> FakeEws:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # NTLM authenticates a connection, not a request
            ntlm: Any = None
            principal: str | None = None

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                authorization = self.headers.get("Authorization") or ""
                if authorization.startswith("NTLM ") and fake._ntlm_file is not None:
                    challenge = self._ntlm_step(authorization[5:])
                    if challenge is not None:
                        self._reply(401, "", f"NTLM {challenge}")
                        return
                    user = self.principal
                elif not authorization and self.principal is not None:
                    user = self.principal  # an NTLM-authenticated connection
                else:
                    user = fake._authenticate(authorization)
                status, reply = fake._handle(self.path, user, body)
                self._reply(status, reply, None)

            def _ntlm_step(self, token: str) -> str | None:
                try:
                    raw = base64.b64decode(token)
                    if raw[8:9] == b"\x01" or self.ntlm is None:
                        self.ntlm = spnego.server(protocol="ntlm")
                    out = self.ntlm.step(raw)
                except (SpnegoError, binascii.Error, ValueError):
                    self.ntlm, self.principal = None, None
                    return None
                if self.ntlm.complete:
                    self.principal = str(self.ntlm.client_principal)
                    return None
                return base64.b64encode(out).decode() if out else None

            def _reply(self, status: int, reply: str, challenge: str | None) -> None:
                data = reply.encode()
                self.send_response(status)
                if status == 401:
                    if challenge is not None:
                        self.send_header("WWW-Authenticate", challenge)
                    else:
                        if fake._ntlm_file is not None:
                            self.send_header("WWW-Authenticate", "NTLM")
                        self.send_header("WWW-Authenticate", 'Basic realm="fake-ews"')
                self.send_header("Content-Type", "text/xml; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._dir = tempfile.TemporaryDirectory(prefix="fake-ews-")
        if self._ntlm:
            self._ntlm_file = os.path.join(self._dir.name, "ntlm-users")
            self._write_ntlm_users()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if self._tls:
            cert, key = _certificate()
            cert_path = os.path.join(self._dir.name, "cert.pem")
            key_path = os.path.join(self._dir.name, "key.pem")
            with open(cert_path, "wb") as out:
                out.write(cert)
            with open(key_path, "wb") as out:
                out.write(key)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert_path, key_path)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fake-ews", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> FakeEws:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The service endpoint (``http://127.0.0.1:<port>/EWS/Exchange.asmx``)."""
        assert self._server is not None, "start() first"
        scheme = "https" if self._tls else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_port}/EWS/Exchange.asmx"

    @property
    def ca_file(self) -> str:
        """With ``tls=True``: the PEM file of the fake's self-signed certificate."""
        assert self._dir is not None and self._tls, "FakeEws(tls=True) and start() first"
        return os.path.join(self._dir.name, "cert.pem")

    # --- set-up and edits ----------------------------------------------------------------

    def add_user(self, name: str, password: str) -> None:
        """A user for basic auth; with ``ntlm=True`` also for NTLM as ``DOMAIN\\name``."""
        with self._lock:
            self._users[name] = password
            self._mailboxes.setdefault(name.lower(), _Mailbox())
        self._write_ntlm_users()

    @property
    def ntlm_user_file(self) -> str:
        """With ``ntlm=True``: the credential file pyspnego's NTLM acceptor reads; the
        test sets the ``NTLM_USER_FILE`` environment variable to it."""
        assert self._ntlm_file is not None, "FakeEws(ntlm=True) and start() first"
        return self._ntlm_file

    def _write_ntlm_users(self) -> None:
        if self._ntlm_file is None:
            return
        with self._lock:
            lines = []
            for name, password in self._users.items():
                domain, _, user = name.rpartition("\\")
                lines.append(f"{domain}:{user}:{password}\n")
        with open(self._ntlm_file, "w", encoding="utf-8") as out:
            out.writelines(lines)

    def add_mailbox(self, address: str) -> None:
        with self._lock:
            self._mailboxes.setdefault(address.lower(), _Mailbox())

    def allow_impersonation(self, user: str) -> None:
        with self._lock:
            self._impersonators.add(user)

    def put_item(
        self,
        mailbox: str,
        uid: str,
        vcalendar: str,
        *,
        cancelled: bool = False,
        free_busy: str = "Busy",
    ) -> str:
        """Create or replace the item with ``uid`` (its MimeContent ``vcalendar``, its
        ``IsCancelled`` and ``LegacyFreeBusyStatus``); returns its item id."""
        with self._lock:
            box = self._mailboxes[mailbox.lower()]
            self._version += 1
            item = box.items.get(uid)
            if item is None or item.deleted is not None:
                if item is not None:
                    box.tombstones.append(item)
                item_id = base64.b64encode(f"AAMk-fake-{next(self._ids):06d}".encode()).decode()
                item = _Item(item_id, uid, vcalendar, 1, self._version, self._version)
                box.items[uid] = item
                item.cancelled, item.free_busy = cancelled, free_busy
                return item_id
            item.cancelled, item.free_busy = cancelled, free_busy
            item.ical = vcalendar
            item.change_key += 1
            item.updated = self._version
            return item.item_id

    def delete_item(self, mailbox: str, uid: str) -> None:
        with self._lock:
            self._version += 1
            self._mailboxes[mailbox.lower()].items[uid].deleted = self._version

    def expire_sync_states(self) -> None:
        with self._lock:
            self._state_floor = self._version + 1

    def fail_next(self, count: int = 1, back_off_ms: int | None = 30000) -> None:
        """The next ``count`` requests get ``ErrorServerBusy`` with ``BackOffMilliseconds``
        (``None``: without one)."""
        with self._lock:
            self._busy.extend([back_off_ms] * count)

    def operations(self) -> list[str]:
        return [r.operation for r in self.requests]

    # --- the protocol --------------------------------------------------------------------

    def _handle(self, path: str, user: str | None, body: bytes) -> tuple[int, str]:
        if path != "/EWS/Exchange.asmx":
            return 404, ""
        try:
            root = ET.fromstring(body)  # noqa: S314 - a loopback test server; the client is exchangelib
        except ET.ParseError:
            return 400, ""
        header = root.find(f"{{{SOAP}}}Header")
        impersonated = None
        if header is not None:
            found = header.find(
                f"{{{T}}}ExchangeImpersonation/{{{T}}}ConnectingSID/{{{T}}}PrimarySmtpAddress"
            )
            impersonated = found.text.strip().lower() if found is not None and found.text else None
        soap_body = root.find(f"{{{SOAP}}}Body")
        request = soap_body[0] if soap_body is not None and len(soap_body) else None
        operation = request.tag.split("}")[-1] if request is not None else "?"
        with self._lock:
            self.requests.append(
                LoggedRequest(operation, user, impersonated, body.decode("utf-8", "replace"))
            )
            if user is None:
                return 401, ""
            if self._busy:
                return 500, _busy_fault(self._busy.pop(0))
            try:
                mailbox = self._mailbox_for(user, impersonated)
                if request is None:
                    raise _Refused("ErrorInvalidRequest", "The request is invalid.")
                if operation == "GetFolder":
                    return 200, self._get_folder(request, mailbox)
                if operation == "SyncFolderItems":
                    return 200, self._sync(request, mailbox)
                if operation == "GetItem":
                    return 200, self._get_item(request, mailbox)
            except _Refused as refused:
                # Exchange's error messages of the sync operations still carry the
                # (empty) SyncState and IncludesLastItemInRange elements.
                tail = "<m:SyncState/><m:IncludesLastItemInRange>true</m:IncludesLastItemInRange>"
                return 200, _envelope(
                    f"{operation}Response",
                    _error_message(
                        f"{operation}ResponseMessage",
                        refused.code,
                        refused.text,
                        tail if operation == "SyncFolderItems" else "",
                    ),
                )
            return 500, _fault("a:ErrorInvalidRequest", f"the fake does not answer {operation}")

    def _authenticate(self, authorization: str | None) -> str | None:
        if not authorization or not authorization.startswith("Basic "):
            return None
        try:
            name, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        with self._lock:
            return name if self._users.get(name) == password and password else None

    def _mailbox_for(self, user: str, impersonated: str | None) -> str:
        if impersonated is not None:
            if user not in self._impersonators:
                raise _Refused(
                    "ErrorImpersonateUserDenied",
                    "The account does not have permission to impersonate the requested user.",
                )
            if impersonated not in self._mailboxes:
                raise _Refused(
                    "ErrorNonExistentMailbox", "The SMTP address has no mailbox associated with it."
                )
            return impersonated
        return user.lower()

    def _check_address(self, request: ET.Element, mailbox: str) -> None:
        for address in request.iter(f"{{{T}}}EmailAddress"):
            if address.text and address.text.strip().lower() != mailbox:
                raise _Refused(
                    "ErrorAccessDenied", "Access is denied. Check credentials and try again."
                )

    def _get_folder(self, request: ET.Element, mailbox: str) -> str:
        self._check_address(request, mailbox)
        messages = []
        for folder in request.iter(f"{{{T}}}DistinguishedFolderId"):
            name = folder.get("Id")
            if name == "root":
                body = (
                    "<t:Folder>"
                    + _ref("FolderId", _folder_id(mailbox, "root"), "AQAAAA==")
                    + "<t:DisplayName>Root</t:DisplayName><t:TotalCount>0</t:TotalCount>"
                    "<t:ChildFolderCount>1</t:ChildFolderCount><t:UnreadCount>0</t:UnreadCount></t:Folder>"
                )
            elif name == "calendar":
                count = sum(1 for i in self._mailboxes[mailbox].items.values() if i.deleted is None)
                body = (
                    "<t:CalendarFolder>"
                    + _ref("FolderId", _folder_id(mailbox, "calendar"), "AgAAAA==")
                    + _ref("ParentFolderId", _folder_id(mailbox, "root"), "AQAAAA==")
                    + "<t:FolderClass>IPF.Appointment</t:FolderClass>"
                    + "<t:DisplayName>Calendar</t:DisplayName>"
                    f"<t:TotalCount>{count}</t:TotalCount><t:ChildFolderCount>0</t:ChildFolderCount>"
                    "<t:DistinguishedFolderId>calendar</t:DistinguishedFolderId></t:CalendarFolder>"
                )
            else:
                messages.append(
                    _error_message(
                        "GetFolderResponseMessage",
                        "ErrorFolderNotFound",
                        "The specified folder could not be found in the store.",
                    )
                )
                continue
            messages.append(
                '<m:GetFolderResponseMessage ResponseClass="Success">'
                "<m:ResponseCode>NoError</m:ResponseCode>"
                f"<m:Folders>{body}</m:Folders></m:GetFolderResponseMessage>"
            )
        return _envelope("GetFolderResponse", "".join(messages))

    def _sync(self, request: ET.Element, mailbox: str) -> str:
        self._check_address(request, mailbox)
        folder = request.find(f"{{{M}}}SyncFolderId/{{{T}}}FolderId")
        named = request.find(f"{{{M}}}SyncFolderId/{{{T}}}DistinguishedFolderId")
        by_id = folder is not None and folder.get("Id") == _folder_id(mailbox, "calendar")
        if not by_id and (named is None or named.get("Id") != "calendar"):
            raise _Refused("ErrorSyncFolderNotFound", "The specified folder could not be found.")
        state_elem = request.find(f"{{{M}}}SyncState")
        since = 0
        if state_elem is not None and state_elem.text:
            since = self._read_state(state_elem.text.strip(), mailbox)
        limit_elem = request.find(f"{{{M}}}MaxChangesReturned")
        limit = int(limit_elem.text) if limit_elem is not None and limit_elem.text else 512
        changes: list[tuple[int, str]] = []
        box = self._mailboxes[mailbox]
        for item in [*box.tombstones, *box.items.values()]:
            if item.deleted is not None:
                if item.created <= since < item.deleted:
                    changes.append(
                        (
                            item.deleted,
                            f"<t:Delete>{_item_ref(item)}</t:Delete>",
                        )
                    )
            elif item.updated > since:
                kind = "Create" if item.created > since else "Update"
                changes.append(
                    (
                        item.updated,
                        f"<t:{kind}><t:CalendarItem>{_item_ref(item)}"
                        f"<t:UID>{escape(item.uid)}</t:UID></t:CalendarItem></t:{kind}>",
                    )
                )
        changes.sort(key=lambda c: c[0])
        page = changes[:limit]
        last = len(changes) <= limit
        upto = self._version if last else page[-1][0]
        state = base64.b64encode(f"fake-ews:{mailbox}:{upto}".encode()).decode()
        return _envelope(
            "SyncFolderItemsResponse",
            '<m:SyncFolderItemsResponseMessage ResponseClass="Success">'
            "<m:ResponseCode>NoError</m:ResponseCode>"
            f"<m:SyncState>{state}</m:SyncState>"
            f"<m:IncludesLastItemInRange>{'true' if last else 'false'}</m:IncludesLastItemInRange>"
            f"<m:Changes>{''.join(c for _, c in page)}"
            f"</m:Changes></m:SyncFolderItemsResponseMessage>",
        )

    def _read_state(self, text: str, mailbox: str) -> int:
        try:
            tag, box, version = base64.b64decode(text, validate=True).decode().split(":")
            since = int(version)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise _Refused(
                "ErrorInvalidSyncStateData",
                "Synchronization state data is corrupt or otherwise invalid.",
            ) from None
        if (
            tag != "fake-ews"
            or box != mailbox
            or since < self._state_floor
            or since > self._version
        ):
            raise _Refused(
                "ErrorInvalidSyncStateData",
                "Synchronization state data is corrupt or otherwise invalid.",
            )
        return since

    def _get_item(self, request: ET.Element, mailbox: str) -> str:
        wanted = {f.get("FieldURI") for f in request.iter(f"{{{T}}}FieldURI")}
        by_id = {i.item_id: i for i in self._mailboxes[mailbox].items.values() if i.deleted is None}
        messages = []
        for ref in request.iter(f"{{{T}}}ItemId"):
            item = by_id.get(ref.get("Id") or "")
            if item is None:
                messages.append(
                    _error_message(
                        "GetItemResponseMessage",
                        "ErrorItemNotFound",
                        "The specified object was not found in the store.",
                    )
                )
                continue
            fields = ""
            if "item:MimeContent" in wanted:
                mime = base64.b64encode(item.ical.encode()).decode()
                fields += f'<t:MimeContent CharacterSet="UTF-8">{mime}</t:MimeContent>'
            fields += _item_ref(item)
            if "calendar:UID" in wanted:
                fields += f"<t:UID>{escape(item.uid)}</t:UID>"
            if "calendar:LegacyFreeBusyStatus" in wanted:
                fields += f"<t:LegacyFreeBusyStatus>{item.free_busy}</t:LegacyFreeBusyStatus>"
            if "calendar:IsCancelled" in wanted:
                fields += f"<t:IsCancelled>{'true' if item.cancelled else 'false'}</t:IsCancelled>"
            messages.append(
                '<m:GetItemResponseMessage ResponseClass="Success">'
                "<m:ResponseCode>NoError</m:ResponseCode>"
                f"<m:Items><t:CalendarItem>{fields}</t:CalendarItem></m:Items></m:GetItemResponseMessage>"
            )
        return _envelope("GetItemResponse", "".join(messages))


def _ref(tag: str, ref: str, change_key: str) -> str:
    return f"<t:{tag} Id={quoteattr(ref)} ChangeKey={quoteattr(change_key)}/>"


def _item_ref(item: _Item) -> str:
    return _ref("ItemId", item.item_id, str(item.change_key))


def _folder_id(mailbox: str, name: str) -> str:
    return base64.b64encode(f"fake-folder:{mailbox}:{name}".encode()).decode()


def _envelope(response: str, messages: str) -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<s:Envelope xmlns:s="{SOAP}"><s:Header>'
        '<h:ServerVersionInfo MajorVersion="15" MinorVersion="1" '
        'MajorBuildNumber="2507" MinorBuildNumber="6" '
        f'Version="V2017_07_11" xmlns:h="{T}" xmlns="{T}" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"/>'
        "</s:Header>"
        '<s:Body xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">'
        f'<m:{response} xmlns:m="{M}" xmlns:t="{T}">'
        f"<m:ResponseMessages>{messages}</m:ResponseMessages></m:{response}>"
        "</s:Body></s:Envelope>"
    )


def _error_message(tag: str, code: str, text: str, tail: str = "") -> str:
    return (
        f'<m:{tag} ResponseClass="Error"><m:MessageText>{escape(text)}</m:MessageText>'
        f"<m:ResponseCode>{code}</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>{tail}</m:{tag}>"
    )


def _fault(code: str, text: str) -> str:
    return (
        f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP}"><s:Body><s:Fault>'
        f'<faultcode xmlns:a="{T}">{code}</faultcode>'
        f'<faultstring xml:lang="en-US">{escape(text)}</faultstring>'
        "</s:Fault></s:Body></s:Envelope>"
    )


def _busy_fault(back_off_ms: int | None) -> str:
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
