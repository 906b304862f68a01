"""The read operations exchangelib sends for a calendar: ``GetFolder`` (distinguished
``root`` and ``calendar``), ``SyncFolderItems`` (sync states, ``MaxChangesReturned``
paging) and ``GetItem`` (``MimeContent`` and the calendar fields pbxcal asks for).

Each function takes the parsed request element and the mailbox it runs as, and returns
the response envelope, or raises ``Refused`` for an EWS error message. Start reading at
``sync_folder_items``.
"""

from __future__ import annotations

import base64
import binascii
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape

from pbxcal.testing.ews_fake.mailbox import Item, Mailboxes
from pbxcal.testing.ews_fake.soap import (
    M,
    Refused,
    T,
    envelope,
    error_message,
    folder_id,
    ref,
)


def item_ref(item: Item) -> str:
    return ref("ItemId", item.item_id, str(item.change_key))


def check_address(request: ET.Element, mailbox: str) -> None:
    for address in request.iter(f"{{{T}}}EmailAddress"):
        if address.text and address.text.strip().lower() != mailbox:
            raise Refused("ErrorAccessDenied", "Access is denied. Check credentials and try again.")


def calendar_folder(request: ET.Element, mailbox: str, where: str) -> None:
    """Refuse a request whose folder (by id or distinguished name) is not the calendar."""
    for folder in request.iter(f"{{{T}}}FolderId"):
        if folder.get("Id") != folder_id(mailbox, "calendar"):
            raise Refused("ErrorFolderNotFound", f"{where}: the folder could not be found.")
    for named in request.iter(f"{{{T}}}DistinguishedFolderId"):
        if named.get("Id") != "calendar":
            raise Refused("ErrorFolderNotFound", f"{where}: the folder could not be found.")


def get_folder(boxes: Mailboxes, request: ET.Element, mailbox: str) -> str:
    check_address(request, mailbox)
    messages = []
    for folder in request.iter(f"{{{T}}}DistinguishedFolderId"):
        name = folder.get("Id")
        if name == "root":
            body = (
                "<t:Folder>"
                + ref("FolderId", folder_id(mailbox, "root"), "AQAAAA==")
                + "<t:DisplayName>Root</t:DisplayName><t:TotalCount>0</t:TotalCount>"
                "<t:ChildFolderCount>1</t:ChildFolderCount><t:UnreadCount>0</t:UnreadCount>"
                "</t:Folder>"
            )
        elif name == "calendar":
            count = sum(1 for i in boxes[mailbox].items.values() if i.deleted is None)
            body = (
                "<t:CalendarFolder>"
                + ref("FolderId", folder_id(mailbox, "calendar"), "AgAAAA==")
                + ref("ParentFolderId", folder_id(mailbox, "root"), "AQAAAA==")
                + "<t:FolderClass>IPF.Appointment</t:FolderClass>"
                + "<t:DisplayName>Calendar</t:DisplayName>"
                f"<t:TotalCount>{count}</t:TotalCount><t:ChildFolderCount>0</t:ChildFolderCount>"
                "<t:DistinguishedFolderId>calendar</t:DistinguishedFolderId></t:CalendarFolder>"
            )
        else:
            messages.append(
                error_message(
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
    return envelope("GetFolderResponse", "".join(messages))


def sync_folder_items(boxes: Mailboxes, request: ET.Element, mailbox: str) -> str:
    check_address(request, mailbox)
    folder = request.find(f"{{{M}}}SyncFolderId/{{{T}}}FolderId")
    named = request.find(f"{{{M}}}SyncFolderId/{{{T}}}DistinguishedFolderId")
    by_id = folder is not None and folder.get("Id") == folder_id(mailbox, "calendar")
    if not by_id and (named is None or named.get("Id") != "calendar"):
        raise Refused("ErrorSyncFolderNotFound", "The specified folder could not be found.")
    state_elem = request.find(f"{{{M}}}SyncState")
    since = 0
    if state_elem is not None and state_elem.text:
        since = _read_state(boxes, state_elem.text.strip(), mailbox)
    limit_elem = request.find(f"{{{M}}}MaxChangesReturned")
    limit = int(limit_elem.text) if limit_elem is not None and limit_elem.text else 512
    changes: list[tuple[int, str]] = []
    box = boxes[mailbox]
    for item in [*box.tombstones, *box.items.values()]:
        if item.deleted is not None:
            if item.created <= since < item.deleted:
                changes.append((item.deleted, f"<t:Delete>{item_ref(item)}</t:Delete>"))
        elif item.updated > since:
            kind = "Create" if item.created > since else "Update"
            changes.append(
                (
                    item.updated,
                    f"<t:{kind}><t:CalendarItem>{item_ref(item)}"
                    f"<t:UID>{escape(item.uid)}</t:UID></t:CalendarItem></t:{kind}>",
                )
            )
    changes.sort(key=lambda c: c[0])
    page = changes[:limit]
    last = len(changes) <= limit
    upto = boxes.version if last else page[-1][0]
    state = base64.b64encode(f"fake-ews:{mailbox}:{upto}".encode()).decode()
    return envelope(
        "SyncFolderItemsResponse",
        '<m:SyncFolderItemsResponseMessage ResponseClass="Success">'
        "<m:ResponseCode>NoError</m:ResponseCode>"
        f"<m:SyncState>{state}</m:SyncState>"
        f"<m:IncludesLastItemInRange>{'true' if last else 'false'}</m:IncludesLastItemInRange>"
        f"<m:Changes>{''.join(c for _, c in page)}"
        f"</m:Changes></m:SyncFolderItemsResponseMessage>",
    )


def _read_state(boxes: Mailboxes, text: str, mailbox: str) -> int:
    try:
        tag, box, version = base64.b64decode(text, validate=True).decode().split(":")
        since = int(version)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Refused(
            "ErrorInvalidSyncStateData",
            "Synchronization state data is corrupt or otherwise invalid.",
        ) from None
    if tag != "fake-ews" or box != mailbox or since < boxes.state_floor or since > boxes.version:
        raise Refused(
            "ErrorInvalidSyncStateData",
            "Synchronization state data is corrupt or otherwise invalid.",
        )
    return since


def get_item(boxes: Mailboxes, request: ET.Element, mailbox: str) -> str:
    wanted = {f.get("FieldURI") for f in request.iter(f"{{{T}}}FieldURI")}
    by_id = {i.item_id: i for i in boxes[mailbox].items.values() if i.deleted is None}
    messages = []
    for item_elem in request.iter(f"{{{T}}}ItemId"):
        item = by_id.get(item_elem.get("Id") or "")
        if item is None:
            messages.append(
                error_message(
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
        fields += item_ref(item)
        if "calendar:UID" in wanted:
            fields += f"<t:UID>{escape(item.uid)}</t:UID>"
        if "calendar:LegacyFreeBusyStatus" in wanted:
            fields += f"<t:LegacyFreeBusyStatus>{item.free_busy}</t:LegacyFreeBusyStatus>"
        if "calendar:IsCancelled" in wanted:
            fields += f"<t:IsCancelled>{'true' if item.cancelled else 'false'}</t:IsCancelled>"
        messages.append(
            '<m:GetItemResponseMessage ResponseClass="Success">'
            "<m:ResponseCode>NoError</m:ResponseCode>"
            f"<m:Items><t:CalendarItem>{fields}</t:CalendarItem></m:Items>"
            "</m:GetItemResponseMessage>"
        )
    return envelope("GetItemResponse", "".join(messages))
