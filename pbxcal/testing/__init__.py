"""Test helpers that run real components on one machine (shipped like structlog's ``testing``).

``pbxcal.testing.asterisk`` builds a cached Debian sid root with Asterisk in it and runs
isolated Asterisk instances from it on loopback ports. Nothing here is imported by the
daemon; start reading at ``AsteriskSandbox``.
"""
