"""The ``Pbx`` port over the Asterisk Manager Interface, in three layers.

* ``codec``   — pure: AMI framing, parsing and encoding (no I/O; hypothesis-tested);
* ``session`` — one TCP connection: login, ``FullyBooted``, ``Ping`` keepalive, single
  and list actions, pipelined batches inside a window; never re-sends anything;
* ``adapter`` — ``AmiPbx``: the port (``read_applied``, ``apply``, ``read_extensions``),
  per-extension refusal, reconnects with backoff, and the one ``map_error``; beside it
  ``actions`` (pure: the steps a batch sends, the list answers read back) and ``config``
  (``AmiConfig``).

Why no panoramisk: pbxcal used to subclass panoramisk 1.4's manager and protocol, then
replace its parser, switch off its ping, reconnect and re-send (which re-sends stale
forwardings after a reconnect and leaves their futures pending), and reach into its
internals to get pipelining at Asterisk's own speed. panoramisk has had no release since
2021 and offers none of that through its public API, so pinning it would only freeze
the internals we depended on. What pbxcal needs from AMI is small (six actions, two
events), and owning it gives one error mapping, no hidden retries and a codec that can
be property-tested. So the dependency is gone; this package is the whole client.

Start reading at ``pbxcal.pbx.ami.adapter``.
"""

from pbxcal.pbx.ami.adapter import ActionObserver, AmiConfig, AmiPbx, ConnectionCallback

__all__ = ["ActionObserver", "AmiConfig", "AmiPbx", "ConnectionCallback"]
