"""`pbxcal links authorize google` against the fake Google on loopback.

The real console script runs the installed-app flow (PKCE, state, a loopback redirect);
the test plays the browser: it reads the consent address the command prints, lets the
fake's consent page answer, and follows the redirect to the command's listener. The
grant lands in a 0600 file that `links add --provider google` takes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pbxcal.testing.google_fake import FakeGoogle

PBXCAL = Path(sys.executable).parent / "pbxcal"


@pytest.fixture
def google() -> Iterator[FakeGoogle]:
    fake = FakeGoogle().start()
    try:
        yield fake
    finally:
        fake.stop()


def authorize(tmp_path: Path, google: FakeGoogle, *, refuse: bool = False) -> tuple[int, str]:
    client = tmp_path / "client.json"
    client.write_text(json.dumps(google.add_client("desktop-1", "desktop-secret-1")))
    output = tmp_path / "anna.json"
    env = {**os.environ, "OAUTHLIB_INSECURE_TRANSPORT": "1"}  # the fake speaks plain http
    proc = subprocess.Popen(
        [str(PBXCAL), "links", "authorize", "google", "--client-file", str(client),
         "--output", str(output), "--timeout", "30"],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stderr is not None
    url = ""
    for line in proc.stderr:
        if line.strip().startswith("http"):
            url = line.strip()
            break
    assert url, "no consent address printed"
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert query["code_challenge_method"] == "S256" and query["state"]
    assert query["access_type"] == "offline"
    redirect = google.consent(url, refuse=refuse)
    with urllib.request.urlopen(redirect, timeout=10) as reply:  # noqa: S310 - loopback
        assert reply.status == 200
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out + err


def test_authorize_writes_a_grant_that_links_add_takes(tmp_path: Path, google: FakeGoogle) -> None:
    code, output = authorize(tmp_path, google)
    assert code == 0, output
    grant = tmp_path / "anna.json"
    assert (grant.stat().st_mode & 0o777) == 0o600
    info = json.loads(grant.read_text())
    assert info["type"] == "authorized_user" and info["refresh_token"]
    assert info["refresh_token"] not in output  # never printed
    # the fake checked the PKCE verifier when the code was exchanged
    assert google.requests["token"] >= 1


def test_a_refused_consent_is_a_one_line_error(tmp_path: Path, google: FakeGoogle) -> None:
    code, output = authorize(tmp_path, google, refuse=True)
    assert code == 2
    assert "refused" in output and "Traceback" not in output
    assert not (tmp_path / "anna.json").exists()
