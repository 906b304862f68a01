"""`pbxcal links authorize microsoft` and `links add --provider graph --grant-file`
through the real console script, against FakeGraph (TLS loopback, the real MSAL).

The test plays the browser: it reads the sign-in address the command prints on stderr,
lets the fake's sign-in page answer (``FakeGraph.sign_in``: consent, then the redirect
followed to the command's loopback listener). The grant lands in a new 0600 file that
`links add` stores encrypted and reads once; no token is ever printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from pbxcal.testing.graph_fake import TENANT, FakeGraph

PBXCAL = Path(sys.executable).parent / "pbxcal"
CLIENT = "cli-app-1"
USER = "anna@contoso.com"

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    with FakeGraph() as fake:
        fake.add_public_client(CLIENT)
        fake.add_mailbox(USER)
        fake.put_event(USER, {
            "id": "ev1", "subject": "0612345678", "showAs": "busy",
            "start": {"dateTime": "2026-11-24T09:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2026-11-24T10:00:00", "timeZone": "UTC"},
        })  # fmt: skip
        yield fake


@pytest.fixture
def config(tmp_path: Path) -> list[str]:
    keys = tmp_path / "keys"
    made = subprocess.run([str(PBXCAL), "keys", "generate", str(keys)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert made.returncode == 0, made.stderr
    secret = tmp_path / "ami.secret"
    secret.write_text("s3cret\n")
    path = tmp_path / "pbxcal.toml"
    path.write_text(f'[pbx.main]\nsecret_file = "{secret}"\n\n[secrets]\nkey_file = "{keys}"\n')
    return ["--config", str(path), "--store", f"sqlite:///{tmp_path / 'store.sqlite3'}"]


def authorize(
    graph: FakeGraph, output: Path, *, approve: bool = True, timeout: float = 30,
    browser: bool = True,
) -> tuple[int, str, str, str]:
    """(exit status, stdout, stderr, the sign-in URL) of the command, the test being
    the browser."""
    proc = subprocess.Popen(
        [str(PBXCAL), "links", "authorize", "microsoft", "--client-id", CLIENT,
         "--tenant", TENANT, "--output", str(output), "--login-hint", USER,
         "--timeout", str(timeout), "--authority-host", graph.authority_host,
         "--ca-file", graph.ca_file],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    err_lines = []
    url = ""
    for line in proc.stderr:
        err_lines.append(line)
        if line.strip().startswith("https://"):
            url = line.strip()
            break
    assert url, "no sign-in address printed: " + "".join(err_lines)
    if browser:
        assert graph.sign_in(url, USER, approve=approve) == 200
    out, err = proc.communicate(timeout=timeout + 30)
    return proc.returncode, out, "".join(err_lines) + err, url


def test_authorize_writes_a_grant_that_links_add_stores_encrypted(
    tmp_path: Path, graph: FakeGraph, config: list[str]
) -> None:
    grant_file = tmp_path / "anna.json"
    code, out, err, url = authorize(graph, grant_file)
    assert code == 0, err
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert query["code_challenge_method"] == "S256" and query["state"]
    assert "offline_access" in query["scope"] and query["login_hint"] == USER
    redirect = urllib.parse.urlsplit(query["redirect_uri"])
    assert redirect.scheme == "http" and redirect.hostname == "localhost" and redirect.port
    assert (grant_file.stat().st_mode & 0o777) == 0o600
    grant = json.loads(grant_file.read_text())
    assert grant["type"] == "microsoft-delegated" and grant["client_id"] == CLIENT
    assert grant["tenant"] == TENANT and grant["authority_host"] == graph.authority_host
    cache = json.loads(grant["token_cache"])
    [refresh] = [entry["secret"] for entry in cache["RefreshToken"].values()]
    [access] = [entry["secret"] for entry in cache["AccessToken"].values()]
    for token in (refresh, access):
        assert token not in out and token not in err  # never printed
    assert "links add --provider graph --grant-file" in out

    added = subprocess.run(
        [str(PBXCAL), "links", "add", *config, "--provider", "graph", "--grant-file",
         str(grant_file), "--graph-url", graph.graph_url, "--ca-file", graph.ca_file,
         "--extension", "100", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert graph.requests["delta"] == 1  # the check read /me once
    store_bytes = Path(config[3].removeprefix("sqlite:///")).read_bytes()
    assert refresh.encode() not in store_bytes and access.encode() not in store_bytes
    listed = subprocess.run([str(PBXCAL), "links", "list", *config, "--json"],
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    [link] = json.loads(listed.stdout)["links"]
    assert link["source"] == "me" and link["active"] is True


def test_a_refused_consent_is_a_one_line_error_and_no_file(
    tmp_path: Path, graph: FakeGraph
) -> None:
    grant_file = tmp_path / "anna.json"
    code, _, err, _ = authorize(graph, grant_file, approve=False)
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert "access_denied" in last and "Traceback" not in err
    assert not grant_file.exists()


def test_no_answer_in_time_is_a_one_line_error(tmp_path: Path, graph: FakeGraph) -> None:
    grant_file = tmp_path / "anna.json"
    code, _, err, _ = authorize(graph, grant_file, timeout=1, browser=False)
    assert code == 2 and "no answer from the browser within 1s" in err
    assert "Traceback" not in err and not grant_file.exists()


def test_a_redirect_with_another_state_is_refused(tmp_path: Path, graph: FakeGraph) -> None:
    """The listener takes the first redirect; one that is not this sign-in's (another
    state) is refused and no grant is written."""
    import urllib.request

    grant_file = tmp_path / "anna.json"
    proc = subprocess.Popen(
        [str(PBXCAL), "links", "authorize", "microsoft", "--client-id", CLIENT,
         "--tenant", TENANT, "--output", str(grant_file), "--timeout", "30",
         "--authority-host", graph.authority_host, "--ca-file", graph.ca_file],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    url = next(line.strip() for line in proc.stderr if line.strip().startswith("https://"))
    redirect = graph.consent(url, USER)
    forged = redirect.replace("state=", "state=forged", 1).replace("localhost", "127.0.0.1")
    with urllib.request.urlopen(forged, timeout=10) as reply:  # noqa: S310 - loopback
        assert reply.status == 200
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "does not belong to this authorization" in err
    assert "Traceback" not in err and not grant_file.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tenant", TENANT], "leave out --tenant"),
        (["--client-id", "x"], "leave out --client-id"),
        (["--source", "bob@contoso.com"], "--source must be me"),
    ],
)
def test_grant_file_excludes_the_app_only_options(
    tmp_path: Path, config: list[str], extra: list[str], message: str
) -> None:
    grant_file = tmp_path / "grant.json"
    grant_file.write_text("{}")
    result = subprocess.run(
        [str(PBXCAL), "links", "add", *config, "--provider", "graph", "--grant-file",
         str(grant_file), "--extension", "100", *extra],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_file_that_is_not_a_grant_is_refused(tmp_path: Path, config: list[str]) -> None:
    grant_file = tmp_path / "grant.json"
    grant_file.write_text(json.dumps({"type": "authorized_user", "refresh_token": "rt-x"}))
    result = subprocess.run(
        [str(PBXCAL), "links", "add", *config, "--provider", "graph", "--grant-file",
         str(grant_file), "--extension", "100"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "not a Microsoft grant" in result.stderr
    assert "rt-x" not in result.stderr


def test_a_refresh_during_the_check_read_stores_the_rotated_token(
    tmp_path: Path, graph: FakeGraph, config: list[str]
) -> None:
    """Linked an hour after signing in: the check read refreshes, the fake rotates the
    refresh token; the store must hold the new one, not the spent one of the file."""
    from pbxcal.store import Store, load_key_ring

    grant_file = tmp_path / "anna.json"
    assert authorize(graph, grant_file)[0] == 0
    cache = json.loads(json.loads(grant_file.read_text())["token_cache"])
    [old] = [entry["secret"] for entry in cache["RefreshToken"].values()]
    graph.expire_access_tokens()
    added = subprocess.run(
        [str(PBXCAL), "links", "add", *config, "--provider", "graph", "--grant-file",
         str(grant_file), "--graph-url", graph.graph_url, "--ca-file", graph.ca_file,
         "--extension", "100", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert not graph.refresh_token_works(CLIENT, old)
    ring = load_key_ring(str(tmp_path / "keys"), None)
    with Store.open(config[3], keys=ring) as store:
        stored = store.load_secret(json.loads(added.stdout)["added"], "graph-token-cache")
    assert stored is not None
    [new] = [e["secret"] for e in json.loads(stored)["RefreshToken"].values()]
    assert graph.refresh_token_works(CLIENT, new)
