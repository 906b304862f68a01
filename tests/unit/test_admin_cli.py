"""``pbxcal admin-token`` and ``pbxcal invitations`` through the real console script, on
a SQLite store: the token is printed once on stdout and never stored or listed; lists
and refusals are one line (or one JSON object)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pbxcal.admin.tokens import hash_token
from pbxcal.store import Store

PBXCAL = Path(sys.executable).parent / "pbxcal"


@pytest.fixture
def run(tmp_path: Path):  # type: ignore[no-untyped-def]
    secret = tmp_path / "ami.secret"
    secret.write_text("x")
    secret.chmod(0o600)
    config = tmp_path / "pbxcal.toml"
    config.write_text(
        f'[pbx.main]\nsecret_file = "{secret}"\nextensions = ["100-199"]\n'
        f'[pbx.branch]\nsecret_file = "{secret}"\n'
        '[portal]\npublic_url = "https://pbx.example.com"\n'
    )
    store = f"sqlite:///{tmp_path / 'state.db'}"

    def pbxcal(*args: str) -> subprocess.CompletedProcess[str]:
        command, *rest = args
        return subprocess.run(
            [str(PBXCAL), command, "--config", str(config), "--store", store, *rest],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    pbxcal.store = store  # type: ignore[attr-defined]
    return pbxcal


def test_admin_token_create_list_revoke(run) -> None:  # type: ignore[no-untyped-def]
    made = run("admin-token", "create", "--name", "reseller", "--pbx", "branch")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("pbxcal_") and token not in made.stderr
    assert "shown only now" in made.stderr
    with Store.open(run.store) as store:
        found = store.admin_token_by_hash(hash_token(token))
        assert found is not None and found[0].pbxes == ("branch",)
    listed = run("admin-token", "list", "--json")
    data = json.loads(listed.stdout)
    assert [t["name"] for t in data["tokens"]] == ["reseller"] and token not in listed.stdout
    assert data["tokens"][0]["pbxes"] == ["branch"] and data["tokens"][0]["revoked_at"] is None
    again = run("admin-token", "create", "--name", "reseller")
    assert again.returncode == 2 and again.stdout == ""
    assert again.stderr.count("\n") == 1 and "exists already" in again.stderr
    revoked = run("admin-token", "revoke", "reseller", "--json")
    assert json.loads(revoked.stdout)["revoked"] == "reseller"
    assert json.loads(run("admin-token", "list", "--json").stdout)["tokens"][0]["revoked_at"]
    unknown = run("admin-token", "create", "--name", "x", "--pbx", "nowhere")
    assert unknown.returncode == 2 and "not a configured PBX" in unknown.stderr


def test_invitations_create_and_list(run) -> None:  # type: ignore[no-untyped-def]
    made = run("invitations", "create", "--pbx", "main", "--extension", "101")
    assert made.returncode == 0, made.stderr
    url = made.stdout.strip()
    assert url.startswith("https://pbx.example.com/i/")
    listed = json.loads(run("invitations", "list", "--json").stdout)["invitations"]
    assert [(i["pbx"], i["extension"], i["state"]) for i in listed] == [("main", "101", "open")]
    assert url.rsplit("/", 1)[1] not in json.dumps(listed)
    refused = run("invitations", "create", "--pbx", "main", "--extension", "250")
    assert refused.returncode == 2 and "not one of" in refused.stderr
    no_mail = run("invitations", "create", "--pbx", "main", "--extension", "102",
                  "--email", "a@example.com", "--json")  # fmt: skip
    answer = json.loads(no_mail.stdout)
    assert no_mail.returncode == 1 and answer["emailed"] is False
    assert "[smtp]" in answer["mail_error"] and answer["url"].startswith("https://")
