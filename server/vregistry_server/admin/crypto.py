"""Credentials at rest: AES-256-GCM with a keyring.

A keyring is a list of named 256-bit keys, one per line as ``KEY_ID:BASE64``
(``#`` starts a comment). The first key encrypts; every key decrypts, so a
key is rotated by putting a new one first and restarting: the store then
re-encrypts every credential with it, after which the old key can go.

A sealed value reads ``v1.KEY_ID.BASE64(nonce || ciphertext || tag)``; the
associated data binds it to its record (``upstream:ID``), so a ciphertext
copied onto another record does not decrypt.

``python -m vregistry_server.admin.crypto generate [KEY_ID]`` prints a new key line.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
FORMAT = "v1"
# Used with fullmatch: "$" would also match before a trailing newline.
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")


class KeyringError(Exception):
    """A keyring cannot be read; the message says why (never the key)."""


class DecryptError(Exception):
    """A sealed value cannot be opened: unknown key, wrong key or tampered data."""


class Keyring:
    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise KeyringError("the keyring holds no key")
        seen: set[str] = set()
        for key_id, key in keys:
            if not _KEY_ID.fullmatch(key_id):
                raise KeyringError(f"key id {key_id!r} must be 1-32 letters, digits, '_' or '-'")
            if len(key) != KEY_BYTES:
                raise KeyringError(f"key {key_id!r} must be {KEY_BYTES} bytes (base64 of 32 bytes)")
            if key_id in seen:
                raise KeyringError(f"key id {key_id!r} appears twice")
            seen.add(key_id)
        self._keys = {key_id: AESGCM(key) for key_id, key in keys}
        self.primary_id = keys[0][0]
        self.key_ids = tuple(key_id for key_id, _ in keys)

    def __repr__(self) -> str:
        return f"Keyring(primary={self.primary_id!r}, keys={list(self.key_ids)!r})"

    @classmethod
    def parse(cls, text: str, *, source: str = "keyring") -> Keyring:
        keys: list[tuple[str, bytes]] = []
        for number, raw in enumerate(re.split(r"[\n,]", text), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            key_id, sep, encoded = line.partition(":")
            if not sep:
                raise KeyringError(f"{source}: entry {number}: expected KEY_ID:BASE64")
            try:
                key = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise KeyringError(
                    f"{source}: key {key_id.strip()!r} is not valid base64"
                ) from None
            keys.append((key_id.strip(), key))
        try:
            return cls(keys)
        except KeyringError as exc:
            raise KeyringError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None, env_value: str | None) -> Keyring | None:
        """The keyring from a file, else from an environment variable's value, else None."""
        if path:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise KeyringError(f"{path}: cannot read key file: {exc.strerror}") from None
            return cls.parse(text, source=str(path))
        if env_value:
            return cls.parse(env_value, source="VREGISTRY_ENCRYPTION_KEYS")
        return None

    def seal(self, plaintext: bytes, associated: bytes) -> str:
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._keys[self.primary_id].encrypt(nonce, plaintext, associated)
        body = base64.b64encode(nonce + sealed).decode()
        return f"{FORMAT}.{self.primary_id}.{body}"

    def open(self, token: str, associated: bytes) -> bytes:
        version, key_id, body = _split(token)
        if version != FORMAT:
            raise DecryptError(f"unknown sealed-value format {version!r}")
        aead = self._keys.get(key_id)
        if aead is None:
            raise DecryptError(f"sealed with key {key_id!r}, which the keyring does not hold")
        try:
            raw = base64.b64decode(body, validate=True)
            return aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], associated)
        except (InvalidTag, binascii.Error, ValueError):
            raise DecryptError(
                f"cannot decrypt a value sealed with key {key_id!r}: wrong key or tampered data"
            ) from None

    def check_holds(self, token: str) -> None:
        """Raise DecryptError when ``token`` was sealed with a key this keyring lacks."""
        key_id = _split(token)[1]
        if key_id not in self._keys:
            raise DecryptError(f"sealed with key {key_id!r}, which the keyring does not hold")

    def is_current(self, token: str) -> bool:
        """True when ``token`` was sealed with the primary key."""
        return _split(token)[1] == self.primary_id


def _split(token: str) -> tuple[str, str, str]:
    parts = token.split(".", 2)
    if len(parts) != 3:
        raise DecryptError("not a sealed value")
    return parts[0], parts[1], parts[2]


def generate_key_line(key_id: str) -> str:
    if not _KEY_ID.fullmatch(key_id):
        raise KeyringError(f"key id {key_id!r} must be 1-32 letters, digits, '_' or '-'")
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "generate" or len(args) > 2:
        print("usage: python -m vregistry_server.admin.crypto generate [KEY_ID]", file=sys.stderr)
        return 2
    key_id = args[1] if len(args) == 2 else f"k{secrets.token_hex(4)}"
    print(generate_key_line(key_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
