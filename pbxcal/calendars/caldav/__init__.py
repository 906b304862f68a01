"""CalDAV calendars (Radicale, Nextcloud, iCloud, ...) as an incremental source.

``CaldavSource`` (``source.py``) implements ``IncrementalSource`` with RFC 6578
sync-collection and an ETag/CTag fallback; ``list_calendars`` finds an account's
calendars for the CLI and the portal. ``dav.py`` holds the blocking requests and the one
place where the ``caldav`` library's errors become pbxcal's; ``objects.py`` turns a
calendar object into VEVENT rows; ``cursor.py`` is the cursor's format.

Start reading at ``pbxcal.calendars.caldav.source``.
"""

from __future__ import annotations

from pbxcal.calendars.caldav.dav import CalendarInfo
from pbxcal.calendars.caldav.source import DEFAULT_TIMEOUT, CaldavSource, list_calendars

__all__ = ["DEFAULT_TIMEOUT", "CaldavSource", "CalendarInfo", "list_calendars"]
