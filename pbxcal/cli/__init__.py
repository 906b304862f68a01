"""The ``pbxcal`` command line. ``main.py`` builds the parser and maps errors to exit 2.

One module per group of commands: ``offline.py`` (plan, slots, check-config — no
network), ``pbx_commands.py`` (apply, pbx-status), ``service_commands.py`` (run, links).
"""
