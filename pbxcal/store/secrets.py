"""Secrets at rest: link credentials encrypted in the store, the keys kept outside it.

What it does: keeps each link's credentials (an OAuth refresh token, a service-account
key, a CalDAV password; one row per (link, kind)) in the ``secrets`` table, encrypted
with a key that never enters the database, so a copy of the store (a backup, a dump, a
stolen disk) reveals nothing without the key. ``SecretTable`` is the store's mixin
(``save_secret``, ``load_secret``, ``delete_secrets``, ``rotate_secrets``); ``KeyRing``
holds the keys, read from a key file or a systemd credential by ``load_key_ring``.

What it must not do: put a secret or a key into an error message, a log line or a
``repr``; write a plaintext secret to the database, even for a moment; or decrypt a
value for a row other than the one it was written for.

The crypto, and why not Fernet. Each value is sealed with AES-256-GCM (``cryptography``'s
``AESGCM``) under a random 96-bit nonce, with the row's identity as associated data
(``pbxcal secret v1``, the link id and the kind). GCM authenticates that data without
storing it, so a ciphertext copied into another row (link 7's Google token pasted over
link 3's, or a CalDAV password moved to another kind) fails to decrypt instead of being
used for the wrong account. Fernet (the issue's first idea) has no associated data: the
same swap would decrypt cleanly, and binding it to the row would take a second construct
(an HMAC over row id and token) and a second key. One AEAD call does both jobs. Link ids
are never reused (``links`` is AUTOINCREMENT / a sequence), so an identity names one link
for ever. Random 96-bit nonces are safe up to 2**32 values per key (NIST SP 800-38D),
orders of magnitude above what a store writes between rotations (every save is one).

Each row also stores the *key id* that sealed it: the first 8 bytes of SHA-256 over a
label and the key, in hex. It reveals nothing about the key, lets a reader pick the right
key at once, makes "written with a key you no longer have" a precise message instead of
a guess, and tells ``rotate_secrets`` which rows still use an old key. The stored value
is ``b"\\x01" + nonce + ciphertext-with-tag`` (the first byte is the format version).

Keys: a key file holds one key per line, standard base64 of 32 random bytes; the first
line is the current key (it encrypts), the others only decrypt; empty lines and lines
starting with ``#`` are ignored. A key file must not be accessible to its group or to
others (mode 0600 or 0400), else it is refused. A systemd credential
(``LoadCredential=`` / ``LoadCredentialEncrypted=``) has the same format and is read from
``$CREDENTIALS_DIRECTORY``; systemd itself keeps that directory private to the service.

Rotation: put a new key first (``pbxcal keys generate --add FILE``), restart the service,
run ``pbxcal keys rotate`` (``rotate_secrets``: every row sealed by another key is
re-encrypted with the current one, in one transaction), then delete the old line.

Start reading at ``SecretTable.save_secret``, then ``KeyRing``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import stat
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import delete, select, update

from pbxcal.errors import ConfigError, StoreError
from pbxcal.store import schema as db
from pbxcal.store.engine import Database, upsert
from pbxcal.store.links import require_link

#: Bytes in a key (AES-256).
KEY_BYTES = 32
#: Bytes in a GCM nonce.
NONCE_BYTES = 12
#: The first byte of every stored value: the format described in the module docstring.
FORMAT_V1 = b"\x01"
#: Largest secret accepted (a service-account JSON key is about 2.3 kB).
MAX_SECRET_BYTES = 64 * 1024
#: Largest key file read (far more than any sensible number of keys).
MAX_KEY_FILE_BYTES = 64 * 1024
#: What a secret's kind may look like ("google-refresh-token", "caldav-password").
KIND = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")

NO_KEY_MESSAGE = (
    "no encryption key configured for stored credentials: set [secrets] key_file or "
    "key_credential (make a key file with: pbxcal keys generate FILE)"
)

#: Makes the one-line ``ConfigError`` of a key file problem from the reason.
_Fail = Callable[[str], ConfigError]

_KEY_ID_LABEL = b"pbxcal key id v1\x00"
_AAD_LABEL = b"pbxcal secret v1\x00"


def key_id(key: bytes) -> str:
    """The public name of a key: 16 hex digits of SHA-256 over a label and the key."""
    return hashlib.sha256(_KEY_ID_LABEL + key).hexdigest()[:16]


def new_key() -> bytes:
    """A fresh random key."""
    return AESGCM.generate_key(bit_length=KEY_BYTES * 8)


def encode_key(key: bytes) -> str:
    """A key as it stands on its line of a key file."""
    return base64.b64encode(key).decode("ascii")


class KeyRing:
    """The keys that seal and open stored secrets; the first one seals.

    Its ``repr`` names the key ids and where the keys came from, never a key.
    """

    def __init__(self, keys: Sequence[bytes], where: str = "keys") -> None:
        if not keys:
            raise ValueError("a key ring needs at least one key")
        for key in keys:
            if len(key) != KEY_BYTES:
                raise ValueError(f"a key must be {KEY_BYTES} bytes, not {len(key)}")
        #: where the keys came from (a path or "credential NAME"), for messages
        self.where = where
        self._ciphers = {key_id(key): AESGCM(key) for key in keys}
        self._current = key_id(keys[0])
        self._keys = tuple(keys)

    def derive(self, info: bytes) -> tuple[bytes, ...]:
        """A 32-byte key for another purpose (``info`` names it) from every key, current
        first (HKDF-SHA256): the portal's cookie key comes from here, the keys stay inside."""
        return tuple(
            HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(key)
            for key in self._keys
        )

    @property
    def current_id(self) -> str:
        """The id of the key that seals new values."""
        return self._current

    @property
    def ids(self) -> tuple[str, ...]:
        """Every key id, the current one first."""
        return tuple(self._ciphers)

    def seal(self, link_id: int, kind: str, plaintext: bytes) -> tuple[str, bytes]:
        """(key id, stored value) of ``plaintext`` for the row (link_id, kind)."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self._current].encrypt(
            nonce, plaintext, associated_data(link_id, kind)
        )
        return self._current, FORMAT_V1 + nonce + sealed

    def unseal(self, link_id: int, kind: str, used_key: str, stored: bytes) -> bytes:
        """The plaintext of the row (link_id, kind); ``StoreError`` saying why not."""
        what = f"secret {kind!r} of link {link_id}"
        cipher = self._ciphers.get(used_key)
        if cipher is None:
            raise StoreError(
                f"cannot decrypt {what}: it was encrypted with key {used_key}, which is not "
                f"in {self.where} (keys: {', '.join(self.ids)})"
            )
        if len(stored) < 1 + NONCE_BYTES + 16 or stored[:1] != FORMAT_V1:
            raise StoreError(f"cannot decrypt {what}: the stored value is damaged")
        nonce, sealed = stored[1 : 1 + NONCE_BYTES], stored[1 + NONCE_BYTES :]
        try:
            return cipher.decrypt(nonce, sealed, associated_data(link_id, kind))
        except InvalidTag:
            raise StoreError(
                f"cannot decrypt {what} with key {used_key}: the stored value was altered "
                "or copied from another link or kind"
            ) from None

    def __repr__(self) -> str:
        return f"<KeyRing {self.where}: {', '.join(self.ids)}>"


def associated_data(link_id: int, kind: str) -> bytes:
    """The row identity a value is bound to (authenticated, not stored)."""
    return _AAD_LABEL + str(int(link_id)).encode("ascii") + b"\x00" + kind.encode("utf-8")


# -- reading keys --------------------------------------------------------------------------


def load_key_ring(key_file: str | None, key_credential: str | None) -> KeyRing | None:
    """The key ring of ``[secrets]``, or None when neither option is set.

    ``key_credential`` wins when both are set and ``$CREDENTIALS_DIRECTORY`` exists (the
    service under systemd); outside the service (the CLI as root) ``key_file`` is used,
    so setting both serves both. Raises ``ConfigError`` with one line naming the option
    and the file; never quotes a key.
    """
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if key_credential and (directory or not key_file):
        if not directory:
            raise ConfigError(
                [
                    "[secrets] key_credential: $CREDENTIALS_DIRECTORY is not set "
                    "(use LoadCredential= in the service, or key_file)"
                ]
            )
        path = Path(directory) / key_credential
        # systemd keeps the credentials directory private to the service (0500, its
        # own ramfs); the mode of the file itself is systemd's choice, not the admin's.
        return _read_key_ring(path, "[secrets] key_credential", check_mode=False)
    if key_file:
        return _read_key_ring(Path(key_file), "[secrets] key_file", check_mode=True)
    return None


def read_key_file(path: Path, option: str = "key file") -> KeyRing:
    """The keys of a key file (mode checked); ``ConfigError`` naming it if unusable."""
    return _read_key_ring(path, option, check_mode=True)


def _read_key_ring(path: Path, option: str, *, check_mode: bool) -> KeyRing:
    def fail(why: str) -> ConfigError:
        return ConfigError([f"{option}: {path}: {why}"])

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY)
    except OSError as exc:
        raise fail(f"cannot read: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise fail("not a regular file")
        if check_mode:
            refuse_open_mode(info.st_mode, fail)
        data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise fail(f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise fail(f"larger than {MAX_KEY_FILE_BYTES} bytes, not a key file")
    keys = parse_keys(data, fail)
    return KeyRing(keys, str(path))


def refuse_open_mode(mode: int, fail: _Fail) -> None:
    """Refuse a key file its group or others may read, write or execute."""
    if mode & 0o077:
        raise fail(
            f"mode {stat.S_IMODE(mode):04o} lets other users at the keys; "
            "chmod 600 it (owned by the service's user)"
        )


def parse_keys(data: bytes, fail: _Fail) -> list[bytes]:
    """The keys of a key file's bytes; errors name the line, never its content."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise fail("not a key file (not ASCII text)") from None
    keys: list[bytes] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            raise fail(f"line {number} is not a base64 key") from None
        if len(key) != KEY_BYTES:
            raise fail(f"line {number} is a {len(key)}-byte key, not {KEY_BYTES} bytes")
        if key in keys:
            raise fail(f"line {number} repeats an earlier key")
        keys.append(key)
    if not keys:
        raise fail("holds no key (make one with: pbxcal keys generate FILE)")
    return keys


# -- the store's calls ---------------------------------------------------------------------


class SecretTable:
    """The secret calls of ``Store`` (a mixin; ``_db`` is set by ``Store``).

    Without a key ring (``Store.open(url)`` without ``keys``) every call but
    ``delete_secrets`` raises ``StoreError`` with ``NO_KEY_MESSAGE``.
    """

    _db: Database
    _keys: KeyRing | None = None

    def use_keys(self, keys: KeyRing | None) -> None:
        """Seal and open secrets with ``keys`` from now on (None: no secrets)."""
        self._keys = keys

    def save_secret(self, link_id: int, kind: str, value: bytes | str) -> None:
        """Store ``value`` encrypted as the link's secret ``kind``, replacing an older one.

        ``kind`` names what it is (``google-refresh-token``, ``caldav-password``:
        lower-case letters, digits, ``_.-``). ``StoreError`` for an unknown link.
        """
        keys = self._require_keys()
        _check_kind(kind)
        plaintext = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        if len(plaintext) > MAX_SECRET_BYTES:
            raise StoreError(
                f"secret {kind!r} of link {link_id} is larger than {MAX_SECRET_BYTES} bytes"
            )
        used_key, sealed = keys.seal(link_id, kind, plaintext)
        row = {
            "link_id": link_id,
            "kind": kind,
            "key_id": used_key,
            "ciphertext": sealed,
            "updated_at": datetime.now(UTC),
        }
        with self._db.transaction(write=True) as conn:
            require_link(conn, link_id)
            upsert(conn, db.secrets, [row], keys=["link_id", "kind"])

    def load_secret(self, link_id: int, kind: str) -> bytes | None:
        """The link's secret ``kind`` decrypted, or None if it has none.

        ``StoreError`` when it cannot be decrypted (its key is not in the ring, or the
        stored value was altered or copied from another row); the message says which.
        """
        keys = self._require_keys()
        _check_kind(kind)
        query = select(db.secrets.c.key_id, db.secrets.c.ciphertext).where(
            db.secrets.c.link_id == link_id, db.secrets.c.kind == kind
        )
        with self._db.transaction() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return keys.unseal(link_id, kind, row.key_id, bytes(row.ciphertext))

    def delete_secrets(self, link_id: int) -> int:
        """Delete every secret of a link; how many there were. Needs no key.

        Removing the link removes its secrets too (foreign key ``ON DELETE CASCADE``).
        """
        with self._db.transaction(write=True) as conn:
            deleted = conn.execute(delete(db.secrets).where(db.secrets.c.link_id == link_id))
        return int(deleted.rowcount or 0)

    def rotate_secrets(self) -> int:
        """Re-encrypt with the current key every secret sealed by another key; how many.

        One transaction: either every such secret now uses the current key, or (one
        cannot be decrypted) nothing changed and ``StoreError`` names that secret. Rows
        are locked while they are rewritten (PostgreSQL), so a secret saved meanwhile
        by another process is not overwritten with its old value.
        """
        keys = self._require_keys()
        query = (
            select(
                db.secrets.c.link_id,
                db.secrets.c.kind,
                db.secrets.c.key_id,
                db.secrets.c.ciphertext,
            )
            .where(db.secrets.c.key_id != keys.current_id)
            .order_by(db.secrets.c.link_id, db.secrets.c.kind)
            .with_for_update()
        )
        count = 0
        with self._db.transaction(write=True, action="cannot rotate secrets in") as conn:
            for row in conn.execute(query).all():
                plaintext = keys.unseal(row.link_id, row.kind, row.key_id, bytes(row.ciphertext))
                used_key, sealed = keys.seal(row.link_id, row.kind, plaintext)
                conn.execute(
                    update(db.secrets)
                    .where(db.secrets.c.link_id == row.link_id, db.secrets.c.kind == row.kind)
                    .values(key_id=used_key, ciphertext=sealed, updated_at=datetime.now(UTC))
                )
                count += 1
        return count

    def _require_keys(self) -> KeyRing:
        if self._keys is None:
            raise StoreError(NO_KEY_MESSAGE)
        return self._keys


def _check_kind(kind: str) -> None:
    if not isinstance(kind, str) or not KIND.fullmatch(kind):
        raise StoreError(
            "a secret's kind is 1-64 lower-case letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
