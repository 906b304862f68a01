"""EWS notifications as the fake serves them: ``Subscribe`` (``StreamingSubscriptionRequest``
and ``PullSubscriptionRequest`` on the calendar folder), ``GetStreamingEvents`` (one
long-lived chunked response per call: one Envelope per notification, and
``ConnectionStatus`` ``Closed`` when ``ConnectionTimeout`` minutes are up, as Exchange
does), ``GetEvents`` (pull: events after a watermark) and ``Unsubscribe``.

``Subscriptions`` is guarded by the fake's condition (the caller holds it); an edit of a
mailbox ``publish``es an event to every subscription on it and wakes the streams. A
subscription id or watermark the fake did not issue, or one ``expire`` dropped, is
``ErrorSubscriptionNotFound`` / ``ErrorInvalidWatermark``. Start reading at
``Subscriptions.subscribe``.

What exchangelib 5.6 sends (captured against this fake; SOAP header: RequestServerVersion
Exchange2016, ExchangeImpersonation, TimeZoneContext), bodies abridged::

    <m:Subscribe><m:StreamingSubscriptionRequest><t:FolderIds>
      <t:DistinguishedFolderId Id="calendar"><t:Mailbox><t:EmailAddress>a@x.org
      </t:EmailAddress>...</t:Mailbox></t:DistinguishedFolderId></t:FolderIds>
      <t:EventTypes><t:EventType>CreatedEvent</t:EventType>...</t:EventTypes>
    </m:StreamingSubscriptionRequest></m:Subscribe>
    (pull: <m:PullSubscriptionRequest> ... <t:Timeout>10</t:Timeout>)
    <m:GetStreamingEvents><m:SubscriptionIds><t:SubscriptionId>..</t:SubscriptionId>
      </m:SubscriptionIds><m:ConnectionTimeout>1</m:ConnectionTimeout></m:GetStreamingEvents>
    <m:GetEvents><m:SubscriptionId>..</m:SubscriptionId><m:Watermark>..</m:Watermark>
    <m:Unsubscribe><m:SubscriptionId>..</m:SubscriptionId></m:Unsubscribe>
"""

from __future__ import annotations

import base64
import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from xml.etree import ElementTree as ET

from pbxcal.testing.ews_fake.mailbox import Item
from pbxcal.testing.ews_fake.operations import calendar_folder, item_ref
from pbxcal.testing.ews_fake.soap import (
    M,
    Refused,
    T,
    envelope,
    error_message,
    folder_id,
    ref,
    success,
)

#: Event types a calendar subscription may name (as exchangelib sends them).
EVENT_TYPES = frozenset(
    {
        "CopiedEvent",
        "CreatedEvent",
        "DeletedEvent",
        "ModifiedEvent",
        "MovedEvent",
        "NewMailEvent",
        "FreeBusyChangedEvent",
    }
)


@dataclass
class Subscription:
    id: str
    mailbox: str
    kind: str  # "streaming" | "pull"
    event_types: frozenset[str]
    events: list[tuple[int, str]] = field(default_factory=list)  # (sequence, event XML)
    delivered: int = 0  # streaming: events up to this sequence went out
    sequence: int = 0


class Subscriptions:
    """Every subscription of the fake (see the module docstring)."""

    def __init__(self) -> None:
        self.live: dict[str, Subscription] = {}
        self.streaming = True
        self.pull = True
        self.generation = 0  # bumped by close_streams: open streams end with Closed
        self.dropped = 0  # bumped by drop_streams: open streams end without a word
        self.opened_streams = 0
        self._ids = itertools.count(1)

    def subscribe(self, request: ET.Element, mailbox: str) -> str:
        streaming = request.find(f"{{{M}}}StreamingSubscriptionRequest")
        pull = request.find(f"{{{M}}}PullSubscriptionRequest")
        chosen = streaming if streaming is not None else pull
        if chosen is None:
            raise Refused("ErrorInvalidSubscriptionRequest", "The subscription request is invalid.")
        if chosen is streaming and not self.streaming:
            raise SchemaRefusal()
        if chosen is pull and not self.pull:
            raise Refused(
                "ErrorSubscriptionAccessDenied",
                "You don't have permission to subscribe to notifications on this folder.",
            )
        calendar_folder(chosen, mailbox, "Subscribe")
        kinds = frozenset(e.text or "" for e in chosen.iter(f"{{{T}}}EventType"))
        if not kinds or not kinds <= EVENT_TYPES:
            raise Refused("ErrorInvalidSubscriptionRequest", "An event type is not valid.")
        sub_id = base64.b64encode(f"fake-sub:{mailbox}:{next(self._ids)}".encode()).decode()
        kind = "streaming" if chosen is streaming else "pull"
        self.live[sub_id] = Subscription(sub_id, mailbox, kind, kinds)
        inner = f"<m:SubscriptionId>{sub_id}</m:SubscriptionId>"
        if kind == "pull":
            inner += f"<m:Watermark>{_watermark(sub_id, 0)}</m:Watermark>"
        return envelope("SubscribeResponse", success("SubscribeResponseMessage", inner))

    def publish(self, mailbox: str, kind: str, item: Item) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        parent = ref("ParentFolderId", folder_id(mailbox, "calendar"), "AgAAAA==")
        for sub in self.live.values():
            if sub.mailbox != mailbox or kind not in sub.event_types:
                continue
            sub.sequence += 1
            sub.events.append(
                (
                    sub.sequence,
                    f"<t:{kind}><t:Watermark>{_watermark(sub.id, sub.sequence)}</t:Watermark>"
                    f"<t:TimeStamp>{stamp}</t:TimeStamp>{item_ref(item)}{parent}</t:{kind}>",
                )
            )

    def expire(self) -> None:
        """Drop every subscription (as Exchange does 30 minutes after a stream's end)."""
        self.live.clear()

    def _own(self, sub_id: str, mailbox: str, kind: str | None = None) -> Subscription:
        sub = self.live.get(sub_id)
        if sub is None or sub.mailbox != mailbox or (kind is not None and sub.kind != kind):
            raise Refused("ErrorSubscriptionNotFound", "The specified subscription was not found.")
        return sub

    def unsubscribe(self, request: ET.Element, mailbox: str) -> str:
        found = request.find(f"{{{M}}}SubscriptionId")
        self._own((found.text or "") if found is not None else "", mailbox)
        del self.live[(found.text or "") if found is not None else ""]
        return envelope("UnsubscribeResponse", success("UnsubscribeResponseMessage"))

    def get_events(self, request: ET.Element, mailbox: str) -> str:
        found = request.find(f"{{{M}}}SubscriptionId")
        sub = self._own((found.text or "") if found is not None else "", mailbox, "pull")
        mark = request.find(f"{{{M}}}Watermark")
        after = _read_watermark(sub.id, (mark.text or "") if mark is not None else "")
        if after is None or after > sub.sequence:
            raise Refused("ErrorInvalidWatermark", "The watermark of this request is invalid.")
        sub.events = [e for e in sub.events if e[0] > after]  # acknowledged
        previous = _watermark(sub.id, after)
        if sub.events:
            body = "".join(xml for _, xml in sub.events)
        else:
            body = f"<t:StatusEvent><t:Watermark>{previous}</t:Watermark></t:StatusEvent>"
        note = (
            f"<m:Notification><t:SubscriptionId>{sub.id}</t:SubscriptionId>"
            f"<t:PreviousWatermark>{previous}</t:PreviousWatermark>"
            f"<t:MoreEvents>false</t:MoreEvents>{body}</m:Notification>"
        )
        return envelope("GetEventsResponse", success("GetEventsResponseMessage", note))

    # --- streaming: the server's handler drives these ------------------------------------

    def stream_ids(self, request: ET.Element, mailbox: str) -> tuple[list[str], int]:
        """The subscription ids of a GetStreamingEvents request and its minutes."""
        ids = [e.text or "" for e in request.iter(f"{{{T}}}SubscriptionId")]
        minutes_elem = request.find(f"{{{M}}}ConnectionTimeout")
        minutes = int(minutes_elem.text or "0") if minutes_elem is not None else 0
        if not ids or not 1 <= minutes <= 30:
            raise Refused("ErrorInvalidRequest", "The request is invalid.")
        for sub_id in ids:
            self._own(sub_id, mailbox, "streaming")
        self.opened_streams += 1
        return ids, minutes

    def pending(self, ids: list[str]) -> bool:
        return any(
            s is None or (s.events and s.events[-1][0] > s.delivered)
            for s in (self.live.get(i) for i in ids)
        )

    def take(self, ids: list[str]) -> tuple[str | None, bool]:
        """The next envelope for a stream (notifications, or the error for a subscription
        gone meanwhile) and whether the stream must end after it."""
        gone = [i for i in ids if i not in self.live]
        if gone:
            tail = "<m:ErrorSubscriptionIds>" + "".join(
                f"<m:SubscriptionId>{i}</m:SubscriptionId>" for i in gone
            ) + "</m:ErrorSubscriptionIds>"
            message = error_message(
                "GetStreamingEventsResponseMessage",
                "ErrorSubscriptionNotFound",
                "The specified subscription was not found.",
                tail,
            )
            return envelope("GetStreamingEventsResponse", message), True
        notes = []
        for sub_id in ids:
            sub = self.live[sub_id]
            new = [xml for seq, xml in sub.events if seq > sub.delivered]
            if new:
                sub.delivered = sub.sequence
                sub.events.clear()
                notes.append(
                    f"<m:Notification><t:SubscriptionId>{sub_id}</t:SubscriptionId>"
                    f"{''.join(new)}</m:Notification>"
                )
        if not notes:
            return None, False
        inner = f"<m:Notifications>{''.join(notes)}</m:Notifications>"
        message = success("GetStreamingEventsResponseMessage", inner)
        return envelope("GetStreamingEventsResponse", message), False


def status(connection_status: str) -> str:
    """A GetStreamingEvents message carrying only the connection status (OK or Closed)."""
    inner = f"<m:ConnectionStatus>{connection_status}</m:ConnectionStatus>"
    message = success("GetStreamingEventsResponseMessage", inner)
    return envelope("GetStreamingEventsResponse", message)


class SchemaRefusal(Exception):
    """Exchange 2010 RTM does not know StreamingSubscriptionRequest: a schema fault."""


def _watermark(sub_id: str, sequence: int) -> str:
    return base64.b64encode(f"fake-wm:{sub_id}:{sequence}".encode()).decode()


def _read_watermark(sub_id: str, text: str) -> int | None:
    try:
        tag, owner, sequence = base64.b64decode(text, validate=True).decode().rsplit(":", 2)
        return int(sequence) if tag == "fake-wm" and owner == sub_id else None
    except (ValueError, UnicodeDecodeError):
        return None
