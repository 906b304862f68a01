"""The keys of secrets at rest: key files, systemd credentials, ``KeyRing``, ``[secrets]``."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from pbxcal.config import load_config
from pbxcal.errors import ConfigError, StoreError
from pbxcal.store import KeyRing, load_key_ring
from pbxcal.store.secrets import encode_key, key_id, new_key, read_key_file


def key_file(tmp_path: Path, text: str, mode: int = 0o600, name: str = "keys") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="ascii")
    path.chmod(mode)
    return path


def problem(call: object) -> str:
    with pytest.raises(ConfigError) as info:
        call()  # type: ignore[operator]
    [line] = info.value.problems
    assert "\n" not in line
    return line


def test_a_key_file_with_comments_and_blank_lines(tmp_path: Path) -> None:
    first, second = new_key(), new_key()
    path = key_file(
        tmp_path, f"# current\n{encode_key(first)}\n\n  {encode_key(second)}  \r\n# old\n"
    )
    ring = read_key_file(path)
    assert ring.ids == (key_id(first), key_id(second))
    assert ring.current_id == key_id(first)
    assert ring.where == str(path)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_modes_are_accepted(tmp_path: Path, mode: int) -> None:
    assert read_key_file(key_file(tmp_path, encode_key(new_key()), mode)).ids


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o660, 0o644, 0o666, 0o601])
def test_a_key_file_others_can_reach_is_refused(tmp_path: Path, mode: int) -> None:
    path = key_file(tmp_path, encode_key(new_key()), mode)
    assert problem(lambda: read_key_file(path)) == (
        f"key file: {path}: mode {mode:04o} lets other users at the keys; chmod 600 it "
        "(owned by the service's user)"
    )


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "holds no key (make one with: pbxcal keys generate FILE)"),
        ("# only a comment\n\n", "holds no key (make one with: pbxcal keys generate FILE)"),
        ("not-base64!!\n", "line 1 is not a base64 key"),
        (f"{encode_key(b'x' * 32)}\nc2hvcnQ=\n", "line 2 is a 5-byte key, not 32 bytes"),
        (base64.b64encode(b"y" * 64).decode() + "\n", "line 1 is a 64-byte key, not 32 bytes"),
        (f"{encode_key(b'z' * 32)}\n{encode_key(b'z' * 32)}\n", "line 2 repeats an earlier key"),
    ],
)
def test_a_bad_key_file_names_the_line_never_its_content(
    tmp_path: Path, text: str, why: str
) -> None:
    path = key_file(tmp_path, text)
    message = problem(lambda: read_key_file(path))
    assert message == f"key file: {path}: {why}"
    for line in text.splitlines():
        if len(line) > 8 and not line.startswith("#"):
            assert line not in message


def test_unreadable_missing_binary_huge_and_directory_key_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert problem(lambda: read_key_file(missing)) == (
        f"key file: {missing}: cannot read: No such file or directory"
    )
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe" + os.urandom(30))
    binary.chmod(0o600)
    assert problem(lambda: read_key_file(binary)).endswith("not a key file (not ASCII text)")
    huge = key_file(tmp_path, "#" * (64 * 1024 + 1), name="huge")
    assert "larger than 65536 bytes" in problem(lambda: read_key_file(huge))
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    assert problem(lambda: read_key_file(directory)).endswith("not a regular file")


def test_the_key_id_is_a_fingerprint_and_nothing_shows_a_key() -> None:
    key = new_key()
    ring = KeyRing([key, new_key()], "/etc/pbxcal/keys")
    assert key_id(key) == ring.current_id and len(ring.current_id) == 16
    assert key_id(bytes(key)) == key_id(key) != key_id(new_key())
    shown = f"{ring!r} {ring} {' '.join(ring.ids)}"
    assert shown.startswith("<KeyRing /etc/pbxcal/keys: ")
    assert encode_key(key) not in shown and key.hex()[:16] not in shown


def test_a_key_ring_needs_whole_keys() -> None:
    with pytest.raises(ValueError, match="at least one key"):
        KeyRing([])
    with pytest.raises(ValueError, match="must be 32 bytes, not 16"):
        KeyRing([b"k" * 16])


def test_seal_and_unseal_bind_the_row() -> None:
    ring = KeyRing([new_key()])
    used, sealed = ring.seal(7, "caldav-password", b"secret")
    assert ring.seal(7, "caldav-password", b"secret")[1] != sealed  # a fresh nonce
    assert ring.unseal(7, "caldav-password", used, sealed) == b"secret"
    for link_id, kind in ((8, "caldav-password"), (7, "caldav-username"), (70, "caldav-password")):
        with pytest.raises(StoreError, match="altered or copied"):
            ring.unseal(link_id, kind, used, sealed)
    # the identity is unambiguous: (71, "x") is not (7, "1x")
    used, sealed = ring.seal(71, "x", b"secret")
    with pytest.raises(StoreError, match="altered or copied"):
        ring.unseal(7, "1x", used, sealed)


# -- load_key_ring: [secrets] key_file / key_credential ------------------------------------


def test_no_secrets_section_means_no_key_ring() -> None:
    assert load_key_ring(None, None) is None


def test_key_file_from_the_config(tmp_path: Path) -> None:
    key = new_key()
    path = key_file(tmp_path, encode_key(key))
    config_file = tmp_path / "pbxcal.toml"
    config_file.write_text(f'[secrets]\nkey_file = "{path}"\n', encoding="utf-8")
    config = load_config(config_file)
    assert (config.secrets_key_file, config.secrets_key_credential) == (str(path), None)
    ring = load_key_ring(config.secrets_key_file, config.secrets_key_credential)
    assert ring is not None and ring.ids == (key_id(key),)
    path.chmod(0o644)
    assert problem(lambda: load_key_ring(str(path), None)).startswith(
        f"[secrets] key_file: {path}: mode 0644"
    )


def test_the_secrets_section_is_validated(tmp_path: Path) -> None:
    config_file = tmp_path / "pbxcal.toml"
    config_file.write_text(
        '[secrets]\nkey_credential = "../etc/shadow"\nkey = "inline"\n', encoding="utf-8"
    )
    with pytest.raises(ConfigError) as info:
        load_config(config_file)
    text = "\n".join(info.value.problems)
    assert "[secrets] key_credential: must be a credential name" in text
    assert "[secrets] key: unknown option" in text
    assert "inline" not in text


def test_key_credential_from_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = new_key()
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o500)
    # systemd's choice of mode, not checked; the directory is private to the service
    key_file(credentials, encode_key(key) + "\n", mode=0o440, name="pbxcal-keys")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert problem(lambda: load_key_ring(None, "pbxcal-keys")) == (
        "[secrets] key_credential: $CREDENTIALS_DIRECTORY is not set "
        "(use LoadCredential= in the service, or key_file)"
    )
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    ring = load_key_ring(str(tmp_path / "ignored"), "pbxcal-keys")  # the credential wins
    assert ring is not None and ring.ids == (key_id(key),)
    assert ring.where == str(credentials / "pbxcal-keys")
    assert problem(lambda: load_key_ring(None, "other")) == (
        f"[secrets] key_credential: {credentials / 'other'}: cannot read: No such file or directory"
    )


def test_outside_the_service_key_file_serves_when_both_are_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI as root has no $CREDENTIALS_DIRECTORY: with both options set it uses the
    key file, while the service (which has one) uses the credential."""
    key = new_key()
    path = key_file(tmp_path, encode_key(key) + "\n", mode=0o600, name="keys")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    ring = load_key_ring(str(path), "pbxcal-keys")
    assert ring is not None and ring.ids == (key_id(key),) and ring.where == str(path)
