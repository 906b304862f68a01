"""On-premises Exchange through EWS (exchangelib): ``EwsCalendarSource`` and its settings.

See ``source`` for the incremental read, ``connection`` for the exchangelib set-up
(endpoint, NTLM/basic/OAuth, impersonation, CA bundle) and the error mapping, ``push`` for
streaming and pull subscriptions (the daemon's ``pbxcal.service.ews_push`` keeps them)
and ``discovery`` for autodiscover.
"""

from pbxcal.calendars.ews.connection import EwsSettings
from pbxcal.calendars.ews.source import EwsCalendarSource

__all__ = ["EwsCalendarSource", "EwsSettings"]
