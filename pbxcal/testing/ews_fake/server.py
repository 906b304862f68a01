"""``FakeEws``: the HTTP(S) server on loopback, its users and credentials, and the
dispatch of SOAP operations to ``operations`` (reading) and ``subscriptions``
(notifications); the HTTP side is ``handler``. See the package docstring for what it
answers.

Authentication per request: HTTP basic, NTLM (pyspnego's acceptor; the connection stays
authenticated, as with IIS) or an OAuth bearer token the fake issued itself from its token
endpoint ``POST /<tenant>/oauth2/v2.0/token`` (client credentials; ``add_app``). A
GetStreamingEvents request is answered with a chunked response that stays open (see
``_Handler._stream``). Start reading at ``FakeEws._handle``.
"""

from __future__ import annotations

import base64
import binascii
import os
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from xml.etree import ElementTree as ET

from pbxcal.testing.ews_fake import autodiscover, operations, writes
from pbxcal.testing.ews_fake.auth import TokenIssuer, certificate
from pbxcal.testing.ews_fake.handler import EWS_PATH, Handler
from pbxcal.testing.ews_fake.mailbox import Mailboxes
from pbxcal.testing.ews_fake.soap import (
    SOAP,
    Refused,
    T,
    busy_fault,
    envelope,
    error_message,
    fault,
)
from pbxcal.testing.ews_fake.subscriptions import SchemaRefusal, Subscriptions, status

__all__ = ["FakeEws", "LoggedRequest"]



@dataclass(frozen=True)
class LoggedRequest:
    """One request as the fake saw it."""

    operation: str
    user: str | None
    impersonated: str | None
    body: str


class FakeEws:
    """See the package docstring."""

    def __init__(
        self,
        *,
        tls: bool = False,
        ntlm: bool = False,
        hostnames: tuple[str, ...] = (),
        minute: float = 60.0,
        port: int = 0,
    ) -> None:
        self._port = port
        self._tls = tls
        self._hostnames = hostnames
        self._ntlm_file: str | None = None
        self._ntlm = ntlm
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._users: dict[str, str] = {}
        self._impersonators: set[str] = set()
        self._boxes = Mailboxes()
        self._subs = Subscriptions()
        self._busy: list[int | None] = []
        #: The OAuth token endpoint's apps and tokens (``auth.TokenIssuer``).
        self.issuer = TokenIssuer()
        #: The EWS URL the autodiscover endpoint gives (None: this server's ``url``).
        self.autodiscover_url: str | None = None
        #: Seconds one ``ConnectionTimeout`` minute lasts (tests shorten it).
        self.minute = minute
        self.requests: list[LoggedRequest] = []
        #: Meeting mail Exchange would have sent for writes (``writes``): (operation, to).
        self.sent: list[tuple[str, str]] = []
        self._read_only: set[str] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> FakeEws:
        self._dir = tempfile.TemporaryDirectory(prefix="fake-ews-")
        if self._ntlm:
            self._ntlm_file = os.path.join(self._dir.name, "ntlm-users")
            self._write_ntlm_users()
        handler = type("Handler", (Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), handler)
        self._server.daemon_threads = True
        if self._tls:
            cert, key = certificate(("127.0.0.1", "localhost", *self._hostnames))
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
        self.close_streams()
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
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.server_port)

    @property
    def origin(self) -> str:
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The service endpoint (``http://127.0.0.1:<port>/EWS/Exchange.asmx``)."""
        return self.origin + EWS_PATH

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
            self._boxes.add(name)
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
            self._boxes.add(address)

    def allow_impersonation(self, user: str) -> None:
        with self._lock:
            self._impersonators.add(user)

    def add_app(self, tenant: str, client_id: str, secret: str) -> None:
        """An app registration for the token endpoint; its tokens act as ``client_id``
        (which then needs ``allow_impersonation`` to open mailboxes)."""
        self.issuer.add_app(tenant, client_id, secret)
        with self._lock:
            self._boxes.add(client_id)

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
        with self._changed:
            kind, item = self._boxes.put(mailbox, uid, vcalendar, cancelled, free_busy)
            self._subs.publish(mailbox.lower(), kind, item)
            self._changed.notify_all()
            return item.item_id

    def delete_item(self, mailbox: str, uid: str) -> None:
        with self._changed:
            kind, item = self._boxes.delete(mailbox, uid)
            self._subs.publish(mailbox.lower(), kind, item)
            self._changed.notify_all()

    def deny_writes(self, mailbox: str, deny: bool = True) -> None:
        """CreateItem/UpdateItem/DeleteItem in ``mailbox`` get ``ErrorAccessDenied`` (the
        account may read the calendar only); ``deny=False`` allows them again."""
        with self._lock:
            if deny:
                self._read_only.add(mailbox.lower())
            else:
                self._read_only.discard(mailbox.lower())

    def items(self, mailbox: str) -> dict[str, str]:
        """The live items of ``mailbox``: UID -> MimeContent (VCALENDAR)."""
        with self._lock:
            box = self._boxes[mailbox]
            return {uid: i.ical for uid, i in box.items.items() if i.deleted is None}

    def expire_sync_states(self) -> None:
        with self._lock:
            self._boxes.state_floor = self._boxes.version + 1

    def fail_next(self, count: int = 1, back_off_ms: int | None = 30000) -> None:
        """The next ``count`` requests get ``ErrorServerBusy`` with ``BackOffMilliseconds``
        (``None``: without one)."""
        with self._lock:
            self._busy.extend([back_off_ms] * count)

    def operations(self) -> list[str]:
        return [r.operation for r in self.requests]

    # --- notifications -------------------------------------------------------------------

    def refuse_streaming(self, refuse: bool = True) -> None:
        """Answer streaming Subscribe requests with a schema fault (Exchange 2010 RTM)."""
        with self._lock:
            self._subs.streaming = not refuse

    def refuse_pull(self, refuse: bool = True) -> None:
        with self._lock:
            self._subs.pull = not refuse

    def close_streams(self) -> None:
        """End every open GetStreamingEvents response with ConnectionStatus Closed."""
        with self._changed:
            self._subs.generation += 1
            self._changed.notify_all()

    def drop_streams(self) -> None:
        """Cut every open GetStreamingEvents connection without a word (a network drop)."""
        with self._changed:
            self._subs.dropped += 1
            self._changed.notify_all()

    def expire_subscriptions(self) -> None:
        """Drop every subscription; open streams get ErrorSubscriptionNotFound."""
        with self._changed:
            self._subs.expire()
            self._changed.notify_all()

    def subscriptions(self) -> dict[str, str]:
        """Live subscription ids and their kind (``streaming`` / ``pull``)."""
        with self._lock:
            return {s.id: s.kind for s in self._subs.live.values()}

    def wait_for_stream(self, count: int, timeout: float) -> None:
        """Block until ``count`` GetStreamingEvents requests were accepted in all."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._subs.opened_streams >= count, timeout):
                raise TimeoutError(f"{self._subs.opened_streams} streams, waited for {count}")

    # --- the protocol --------------------------------------------------------------------

    def _authenticate(self, authorization: str) -> str | None:
        if authorization.startswith("Bearer "):
            return self.issuer.check(authorization[7:].strip())
        if not authorization.startswith("Basic "):
            return None
        try:
            name, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        with self._lock:
            return name if self._users.get(name) == password and password else None

    def _autodiscover(self, user: str | None, body: bytes) -> tuple[int, str]:
        users = autodiscover.requested_users(body)
        with self._lock:
            self.requests.append(
                LoggedRequest("GetUserSettings", user, None, body.decode("utf-8", "replace"))
            )
        if user is None:
            return 401, ""
        if users is None:
            return 400, ""

        def allowed(address: str) -> bool:
            with self._lock:
                own = address == user.lower()
                return address in self._boxes and (own or user in self._impersonators)

        return 200, autodiscover.user_settings(users, self.autodiscover_url or self.url, allowed)

    def _mailbox_for(self, user: str, impersonated: str | None) -> str:
        if impersonated is not None:
            if user not in self._impersonators:
                raise Refused(
                    "ErrorImpersonateUserDenied",
                    "The account does not have permission to impersonate the requested user.",
                )
            if impersonated not in self._boxes:
                raise Refused(
                    "ErrorNonExistentMailbox", "The SMTP address has no mailbox associated with it."
                )
            return impersonated
        return user.lower()

    def _parse(
        self, user: str | None, body: bytes
    ) -> tuple[str, ET.Element | None, str | None] | tuple[int, str]:
        """(operation, request element, impersonated) — or an answer right away."""
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
                return 500, busy_fault(self._busy.pop(0))
        return operation, request, impersonated

    def _handle(
        self, user: str, operation: str, request: ET.Element | None, impersonated: str | None
    ) -> tuple[int, str]:
        with self._lock:
            try:
                mailbox = self._mailbox_for(user, impersonated)
                if request is None:
                    raise Refused("ErrorInvalidRequest", "The request is invalid.")
                if operation == "GetFolder":
                    return 200, operations.get_folder(self._boxes, request, mailbox)
                if operation == "SyncFolderItems":
                    return 200, operations.sync_folder_items(self._boxes, request, mailbox)
                if operation == "GetItem":
                    return 200, operations.get_item(self._boxes, request, mailbox)
                if operation in writes.OPERATIONS:
                    written = writes.answer(
                        operation, self._boxes, request, mailbox,
                        lambda kind, item: self._subs.publish(mailbox, kind, item),
                        self.sent, mailbox in self._read_only,
                    )  # fmt: skip
                    self._changed.notify_all()
                    return 200, written
                if operation == "Subscribe":
                    return 200, self._subs.subscribe(request, mailbox)
                if operation == "GetEvents":
                    return 200, self._subs.get_events(request, mailbox)
                if operation == "Unsubscribe":
                    return 200, self._subs.unsubscribe(request, mailbox)
            except SchemaRefusal:
                text = (
                    "The request failed schema validation: The element 'Subscribe' has invalid"
                    " child element 'StreamingSubscriptionRequest'."
                )
                return 500, fault("a:ErrorSchemaValidation", text, "ErrorSchemaValidation")
            except Refused as refused:
                # Exchange's error messages of the sync operations still carry the
                # (empty) SyncState and IncludesLastItemInRange elements.
                tail = "<m:SyncState/><m:IncludesLastItemInRange>true</m:IncludesLastItemInRange>"
                return 200, envelope(
                    f"{operation}Response",
                    error_message(
                        f"{operation}ResponseMessage",
                        refused.code,
                        refused.text,
                        tail if operation == "SyncFolderItems" else "",
                    ),
                )
            return 500, fault("a:ErrorInvalidRequest", f"the fake does not answer {operation}")

    def _open_stream(
        self, user: str, request: ET.Element | None, impersonated: str | None
    ) -> tuple[list[str], float] | tuple[int, str]:
        with self._lock:
            try:
                mailbox = self._mailbox_for(user, impersonated)
                if request is None:
                    raise Refused("ErrorInvalidRequest", "The request is invalid.")
                ids, minutes = self._subs.stream_ids(request, mailbox)
            except Refused as refused:
                message = error_message(
                    "GetStreamingEventsResponseMessage", refused.code, refused.text
                )
                return 200, envelope("GetStreamingEventsResponse", message)
            self._changed.notify_all()
            return ids, time.monotonic() + minutes * self.minute

    def _next_on_stream(
        self, ids: list[str], deadline: float, generation: int, dropped: int
    ) -> tuple[str | None, str]:
        """Wait for what the stream sends next: (envelope or None, "open"|"end"|"drop")."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._subs.pending(ids)
                or self._subs.generation != generation
                or self._subs.dropped != dropped
                or time.monotonic() >= deadline,
                max(deadline - time.monotonic(), 0.0),
            )
            if self._subs.dropped != dropped:
                return None, "drop"
            message, last = self._subs.take(ids)
            if last:
                return message, "end"
            if message is not None:
                return message, "open"
            return status("Closed"), "end"
