"""pbxcal's own error tree. Adapters map their library's exceptions into it at the boundary.

::

    PbxcalError                 every error pbxcal raises on purpose
    ├── ConfigError             the TOML config is wrong (names file, section, key)
    ├── InputError              a calendar file or argument cannot be used
    ├── UnsafeValue             a value was refused before it could reach a PBX
    ├── PbxError                talking to a PBX failed
    │   ├── PbxUnavailable      not connected / connection lost / timed out
    │   │   └── LeaseLost       this process may not write to that PBX (pbxcal.cluster)
    │   ├── PbxAuthFailed       login refused: wrong user or secret (not retried hot)
    │   └── PbxActionFailed     the PBX answered an action with an error
    ├── CalendarError           fetching a calendar failed
    │   ├── CalendarUnavailable the source cannot be reached right now
    │   │   └── CalendarRateLimited   ... and said how long to wait
    │   ├── CalendarAuthFailed  the credentials were refused (wrong password)
    │   └── CalendarNeedsRelink the grant was revoked or expired: link again
    └── StoreError              the state store cannot be used
        └── SchemaTooNew        the database was written by a newer pbxcal

Code that catches errors from outside systems catches these, never a library's own.
Every message is one line that says what was wrong and where.
"""

from __future__ import annotations


class PbxcalError(Exception):
    """Base class of every error pbxcal raises on purpose."""


class ConfigError(PbxcalError):
    """The configuration is invalid. ``problems`` holds one line per error."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class InputError(PbxcalError):
    """A calendar file or a command-line argument cannot be used."""


class UnsafeValue(PbxcalError):
    """A value was refused before it could be written to a PBX (e.g. CR/LF in it)."""


class PbxError(PbxcalError):
    """Talking to a PBX failed."""


class PbxUnavailable(PbxError):
    """The PBX cannot be reached: not connected, connection lost, or an action timed out."""


class LeaseLost(PbxUnavailable):
    """This process does not hold (or no longer holds) the write lease of a PBX.

    Raised before a write is sent (the lease ran out on this process's own clock, or was
    never granted) and by a store write about a PBX that a newer lease holder already
    wrote about. A ``PbxUnavailable`` so that a caller treats the PBX as out of reach:
    nothing is written, and it reads back once the lease is its own again.
    """


class PbxAuthFailed(PbxError):
    """The PBX refused the login (wrong username or secret)."""


class PbxActionFailed(PbxError):
    """The PBX answered an action with ``Response: Error``."""


class CalendarError(PbxcalError):
    """Fetching or reading a calendar failed."""


class CalendarUnavailable(CalendarError):
    """The calendar source cannot be reached right now; last known events stay in use."""


class CalendarRateLimited(CalendarUnavailable):
    """The provider asked us to slow down; ``retry_after`` seconds if it said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CalendarAuthFailed(CalendarError):
    """The provider refused the credentials (wrong user name or password)."""


class CalendarNeedsRelink(CalendarError):
    """The provider revoked or expired the grant (OAuth ``invalid_grant``): link again."""


class StoreError(PbxcalError):
    """The state store cannot be opened or written."""


class SchemaTooNew(StoreError):
    """The database schema is newer than this pbxcal understands."""
