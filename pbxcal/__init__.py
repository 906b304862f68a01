"""pbxcal: calendar appointments whose title is a phone number become call forwardings.

Start reading at ``pbxcal/core/`` (the pure logic: titles, policy, windows, slots), then
``pbxcal/cli/main.py`` (the commands), then the adapters (``pbxcal/pbx/`` for Asterisk).
The shared picture of how the pieces fit is in the project's design guide.
"""

__version__ = "0.1.0"
