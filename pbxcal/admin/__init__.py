"""What admins do, once, for the CLI, the admin API and the customer portal.

What it does: ``operations`` (add a link after one live read, a link's overview with
its coming forwardings and ignored appointments, enable/disable, remove with
revocation at the provider, sync log, sync now), ``invitations`` (single-use,
expiring links for customers) and ``tokens`` (admin API bearer tokens, hashed and
scoped to PBXes). Every function here is blocking (store calls, at most one HTTP call
to a provider): async callers run it with ``asyncio.to_thread``.

What it must not do: know about HTTP requests, argparse or HTML (the callers map
``InputError``/``LinkNotFound`` to their own way of saying no), or print.

Start reading at ``operations``.
"""
