"""On-premises Exchange through EWS (exchangelib): ``EwsCalendarSource`` and its settings.

See ``source`` for the incremental read and ``connection`` for the exchangelib set-up
(endpoint, NTLM/basic, impersonation, CA bundle) and the error mapping.
"""

from pbxcal.calendars.ews.connection import EwsSettings
from pbxcal.calendars.ews.source import EwsCalendarSource

__all__ = ["EwsCalendarSource", "EwsSettings"]
