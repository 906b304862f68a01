"""Test helpers for users of pbxcal's ports (shipped like structlog's ``testing``).

* ``pbxcal.testing.fakes``: ``FakePbx`` (the ``Pbx`` port in memory: records applies,
  refuses chosen extensions, can be unavailable, waits for the next apply as an event)
  and ``FakeClock`` (the clock port, moved by hand).
* ``pbxcal.testing.asterisk``: builds a cached Debian sid root with Asterisk in it and
  runs isolated Asterisk instances from it on loopback ports, with the config files
  pbxcal ships (the root is built in ``asterisk_root``, the files written from
  ``asterisk_files``).
* ``pbxcal.testing.ports``: ``free_port``, a free loopback port for a test server.

Nothing here is imported by the daemon; start reading at ``FakePbx`` or
``AsteriskSandbox``.
"""
