"""The write operations exchangelib sends for calendar items: ``CreateItem``,
``UpdateItem`` and ``DeleteItem``, answered as Exchange 2016 does.

A created item gets an item id and a change key; its fields (``Subject``, ``Body``,
``UID`` — Exchange makes one when none is sent —, ``Start``, ``End``,
``LegacyFreeBusyStatus``, ``RequiredAttendees``) are kept and exported as the item's
MimeContent (a VCALENDAR as Exchange writes one: ``ORGANIZER`` the mailbox, an
``ATTENDEE`` per attendee, ``TRANSP`` from the free/busy status), so the read side
(``operations``) serves it like any other item. An update applies ``SetItemField`` /
``DeleteItemField`` and bumps the change key; a stale change key is a conflict only under
``ConflictResolution="NeverOverwrite"`` (``ErrorIrresolvableConflict``), as Exchange
does. A delete removes the item. Each edit notifies the mailbox's subscriptions.

Meeting mail: Exchange sends invitations, updates or cancellations to the attendees
unless the request says ``SendToNone`` (CreateItem ``SendMeetingInvitations``, UpdateItem
``SendMeetingInvitationsOrCancellations``, DeleteItem ``SendMeetingCancellations``); the
fake records each message Exchange would have sent in ``sent`` (operation, attendee).
A missing attribute is the error Exchange answers (``ErrorSendMeetingInvitationsRequired``
and the like).

What exchangelib 5.6 sends (captured against this fake), bodies abridged::

    <m:CreateItem MessageDisposition="SaveOnly" SendMeetingInvitations="SendToNone">
      <m:SavedItemFolderId><t:DistinguishedFolderId Id="calendar"><t:Mailbox>
        <t:EmailAddress>a@x.org</t:EmailAddress>...</t:Mailbox></t:DistinguishedFolderId>
      </m:SavedItemFolderId><m:Items><t:CalendarItem><t:Subject>..</t:Subject>
        <t:Body BodyType="Text">..</t:Body>...<t:UID>..</t:UID>
        <t:Start>2026-12-01T09:00:00Z</t:Start><t:End>..</t:End>
        <t:IsAllDayEvent>0</t:IsAllDayEvent><t:LegacyFreeBusyStatus>Busy</t:LegacyFreeBusyStatus>
        <t:RequiredAttendees><t:Attendee><t:Mailbox><t:Name>..</t:Name>
          <t:EmailAddress>..</t:EmailAddress>...</t:Mailbox>
          <t:ResponseType>Unknown</t:ResponseType></t:Attendee></t:RequiredAttendees>
        <t:StartTimeZone Id="UTC"/><t:EndTimeZone Id="UTC"/></t:CalendarItem></m:Items>
    </m:CreateItem>
    <m:UpdateItem ConflictResolution="AlwaysOverwrite" MessageDisposition="SaveOnly"
        SendMeetingInvitationsOrCancellations="SendToNone" SuppressReadReceipts="true">
      <m:ItemChanges><t:ItemChange><t:ItemId Id=".." ChangeKey=".."/><t:Updates>
        <t:SetItemField><t:FieldURI FieldURI="calendar:Start"/><t:CalendarItem>
          <t:Start>..</t:Start></t:CalendarItem></t:SetItemField>... (also item:Subject,
        calendar:End, calendar:StartTimeZone, calendar:EndTimeZone)
      </t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>
    <m:DeleteItem DeleteType="HardDelete" SendMeetingCancellations="SendToNone"
        AffectedTaskOccurrences="AllOccurrences" SuppressReadReceipts="true">
      <m:ItemIds><t:ItemId Id=".." ChangeKey=".."/></m:ItemIds></m:DeleteItem>

Not modelled: recurring items, occurrences, attachments, drafts; the fake keeps one item
per UID, so a CreateItem with the UID of a live item is refused (``ErrorItemSave``).
Start reading at ``create_item``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from xml.etree import ElementTree as ET

import icalendar

from pbxcal.testing.ews_fake.mailbox import Item, Mailboxes
from pbxcal.testing.ews_fake.operations import item_ref
from pbxcal.testing.ews_fake.soap import M, Refused, T, envelope, success

OPERATIONS = frozenset({"CreateItem", "UpdateItem", "DeleteItem"})

#: (operation, attendee address): meeting mail Exchange would have sent.
Sent = list[tuple[str, str]]
#: ``publish(kind, item)``: tell the mailbox's subscriptions.
Publish = Callable[[str, Item], None]

_SEND_TO_NONE = "SendToNone"
_SEND_VALUES = frozenset({"SendToNone", "SendOnlyToAll", "SendToAllAndSaveCopy",
                          "SendOnlyToChanged", "SendToChangedAndSaveCopy"})  # fmt: skip
_FIELDS = {"item:Subject": "Subject", "item:Body": "Body", "calendar:UID": "UID",
           "calendar:Start": "Start", "calendar:End": "End",
           "calendar:LegacyFreeBusyStatus": "LegacyFreeBusyStatus",
           "calendar:RequiredAttendees": "RequiredAttendees"}  # fmt: skip


def answer(
    operation: str, boxes: Mailboxes, request: ET.Element, mailbox: str, publish: Publish,
    sent: Sent, denied: bool,
) -> str:  # fmt: skip
    """The response envelope of a write ``operation`` (``Refused`` for an EWS error);
    ``denied``: the account may read the mailbox's calendar but not write to it."""
    if denied:
        raise Refused("ErrorAccessDenied", "Access is denied. Check credentials and try again.")
    if operation == "CreateItem":
        return create_item(boxes, request, mailbox, publish, sent)
    if operation == "UpdateItem":
        return update_item(boxes, request, mailbox, publish, sent)
    return delete_item(boxes, request, mailbox, publish, sent)


def create_item(
    boxes: Mailboxes, request: ET.Element, mailbox: str, publish: Publish, sent: Sent
) -> str:
    mode = _send_mode(request, "SendMeetingInvitations", "ErrorSendMeetingInvitationsRequired")
    folder = request.find(f"{{{M}}}SavedItemFolderId/{{{T}}}DistinguishedFolderId")
    if folder is None or folder.get("Id") != "calendar":
        raise Refused("ErrorFolderNotFound", "The specified folder could not be found.")
    owner = folder.find(f"{{{T}}}Mailbox/{{{T}}}EmailAddress")
    if owner is not None and (owner.text or "").strip().lower() != mailbox:
        raise Refused("ErrorAccessDenied", "Access is denied. Check credentials and try again.")
    messages = []
    for element in request.iterfind(f"{{{M}}}Items/{{{T}}}CalendarItem"):
        fields = _read_fields(element)
        if "Start" not in fields or "End" not in fields:
            raise Refused("ErrorMissingInformation", "Start and End are required.")
        uid = str(fields.get("UID") or "040000008200E00074C5B7101A82E008" + secrets.token_hex(16))
        live = boxes[mailbox].items.get(uid)
        if live is not None and live.deleted is None:
            raise Refused("ErrorItemSave", "The item could not be saved (its UID is in use).")
        fields["UID"] = uid
        kind, item = boxes.put(mailbox, uid, _export(fields, mailbox), False,
                               str(fields.get("LegacyFreeBusyStatus") or "Busy"))  # fmt: skip
        item.fields = fields
        publish(kind, item)
        _mail(sent, "CreateItem", mode, fields)
        messages.append(success("CreateItemResponseMessage",
                                f"<m:Items><t:CalendarItem>{item_ref(item)}</t:CalendarItem>"
                                "</m:Items>"))  # fmt: skip
    return envelope("CreateItemResponse", "".join(messages))


def update_item(
    boxes: Mailboxes, request: ET.Element, mailbox: str, publish: Publish, sent: Sent
) -> str:
    mode = _send_mode(request, "SendMeetingInvitationsOrCancellations",
                      "ErrorSendMeetingInvitationsOrCancellationsRequired")  # fmt: skip
    never = request.get("ConflictResolution") == "NeverOverwrite"
    messages = []
    for change in request.iterfind(f"{{{M}}}ItemChanges/{{{T}}}ItemChange"):
        item = _item(boxes, mailbox, change.find(f"{{{T}}}ItemId"), never)
        fields = dict(item.fields or {})
        for update in change.iterfind(f"{{{T}}}Updates/*"):
            uri = update.find(f"{{{T}}}FieldURI")
            name = _FIELDS.get(uri.get("FieldURI", "") if uri is not None else "")
            if name is None:
                continue  # a field the fake does not export
            if update.tag == f"{{{T}}}DeleteItemField":
                fields.pop(name, None)
                continue
            new = update.find(f"{{{T}}}CalendarItem")
            if new is not None:
                fields.update({k: v for k, v in _read_fields(new).items() if k == name})
        if fields.get("UID", item.uid) != item.uid:
            raise Refused("ErrorInvalidPropertySet", "The UID of an item cannot be changed.")
        fields["UID"] = item.uid
        kind, item = boxes.put(mailbox, item.uid, _export(fields, mailbox), False,
                               str(fields.get("LegacyFreeBusyStatus") or "Busy"))  # fmt: skip
        item.fields = fields
        publish(kind, item)
        _mail(sent, "UpdateItem", mode, fields)
        messages.append(success("UpdateItemResponseMessage",
                                f"<m:Items><t:CalendarItem>{item_ref(item)}</t:CalendarItem>"
                                "</m:Items><m:ConflictResults><t:Count>0</t:Count>"
                                "</m:ConflictResults>"))  # fmt: skip
    return envelope("UpdateItemResponse", "".join(messages))


def delete_item(
    boxes: Mailboxes, request: ET.Element, mailbox: str, publish: Publish, sent: Sent
) -> str:
    mode = _send_mode(request, "SendMeetingCancellations", "ErrorSendMeetingCancellationsRequired")
    messages = []
    for ref in request.iterfind(f"{{{M}}}ItemIds/{{{T}}}ItemId"):
        item = _item(boxes, mailbox, ref, False)
        kind, gone = boxes.delete(mailbox, item.uid)
        publish(kind, gone)
        _mail(sent, "DeleteItem", mode, item.fields or {})
        messages.append(success("DeleteItemResponseMessage"))
    return envelope("DeleteItemResponse", "".join(messages))


def _send_mode(request: ET.Element, attribute: str, missing: str) -> str:
    mode = request.get(attribute)
    if mode not in _SEND_VALUES:
        raise Refused(missing, f"The {attribute} attribute is required for calendar items.")
    return mode


def _item(boxes: Mailboxes, mailbox: str, ref: ET.Element | None, never: bool) -> Item:
    wanted = ref.get("Id") if ref is not None else None
    for item in boxes[mailbox].items.values():
        if item.deleted is None and item.item_id == wanted:
            assert ref is not None
            key = ref.get("ChangeKey")
            if never and key is not None and key != str(item.change_key):
                raise Refused("ErrorIrresolvableConflict",
                              "The send or update operation could not be performed because the "
                              "change key passed in the request does not match the current "
                              "change key for the item.")  # fmt: skip
            return item
    raise Refused("ErrorItemNotFound", "The specified object was not found in the store.")


def _text(element: ET.Element, tag: str) -> str | None:
    found = element.find(f"{{{T}}}{tag}")
    return None if found is None else (found.text or "")


def _read_fields(element: ET.Element) -> dict[str, object]:
    fields: dict[str, object] = {}
    for tag in ("Subject", "Body", "UID", "Start", "End", "LegacyFreeBusyStatus"):
        value = _text(element, tag)
        if value is not None:
            fields[tag] = value
    attendees = element.find(f"{{{T}}}RequiredAttendees")
    if attendees is not None:
        fields["RequiredAttendees"] = [
            ((a.findtext(f"{{{T}}}Mailbox/{{{T}}}Name") or ""),
             (a.findtext(f"{{{T}}}Mailbox/{{{T}}}EmailAddress") or ""))
            for a in attendees.iterfind(f"{{{T}}}Attendee")
        ]  # fmt: skip
    return fields


def _moment(text: object) -> datetime:
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        raise Refused("ErrorInvalidValueForProperty", "A date is not valid.") from None
    if moment.tzinfo is None:
        raise Refused("ErrorInvalidValueForProperty", "A date has no time zone.")
    return moment.astimezone(UTC)


def _export(fields: dict[str, object], mailbox: str) -> str:
    """The item as Exchange exports its MimeContent (a VCALENDAR with one VEVENT)."""
    start, end = _moment(fields["Start"]), _moment(fields["End"])
    if end < start:
        raise Refused("ErrorCalendarEndDateIsEarlierThanStartDate",
                      "The end date is earlier than the start date.")  # fmt: skip
    calendar = icalendar.Calendar()
    calendar.add("prodid", "Microsoft Exchange Server 2010")
    calendar.add("version", "2.0")
    calendar.add("method", "PUBLISH")
    event = icalendar.Event()
    event.add("uid", str(fields["UID"]))
    event.add("summary", str(fields.get("Subject") or ""))
    if fields.get("Body"):
        event.add("description", str(fields["Body"]))
    event.add("dtstart", start)
    event.add("dtend", end)
    event.add("dtstamp", datetime.now(UTC))
    free = fields.get("LegacyFreeBusyStatus") == "Free"
    event.add("transp", "TRANSPARENT" if free else "OPAQUE")
    attendees = fields.get("RequiredAttendees")
    if isinstance(attendees, list) and attendees:
        event.add("organizer", f"mailto:{mailbox}")
        for name, address in attendees:
            event.add("attendee", f"mailto:{address}", parameters={"CN": name, "RSVP": "TRUE"})
    calendar.add_component(event)
    return str(calendar.to_ical().decode())


def _mail(sent: Sent, operation: str, mode: str, fields: dict[str, object]) -> None:
    if mode == _SEND_TO_NONE:
        return
    attendees = fields.get("RequiredAttendees")
    for _, address in attendees if isinstance(attendees, list) else []:
        sent.append((operation, address))
