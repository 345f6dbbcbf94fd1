"""API keys: creation, hashed storage, verification (issue 6).

A key looks like ``hs_<id>_<secret>``: ``id`` is 8 hex characters that find the
record, ``secret`` is ``secrets.token_urlsafe(32)`` (256 random bits). Only an
HMAC-SHA256 of the whole key is stored, keyed with a random per-file pepper.

Why a fast hash and not scrypt/pbkdf2: slow KDFs exist to make guessing
low-entropy *passwords* expensive. A 256-bit random key cannot be guessed at any
hash speed, so a leaked keys file still does not reveal a usable key, and the
check stays in the microseconds on every request. The pepper (HMAC key) makes
hashes from one file useless against another.

The keys file (``service.auth.keys_file``) is JSON, mode 0600, written
atomically (temp file in the same folder, fsync, rename) under an ``flock`` so
that two ``headline keys`` commands never lose each other's change. Readers
(the service workers) re-read it when its mtime/size/inode change, so a revoke
takes effect on the next request without a restart. The plain key is returned
once by ``create`` and is never stored or logged.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

SCOPES = ("generate", "admin")
KEY_PREFIX = "hs"
_ID = re.compile(r"^[0-9a-f]{8}$")
_KEY = re.compile(r"^hs_([0-9a-f]{8})_([A-Za-z0-9_-]{32,64})$")
_NAME = re.compile(r"^[\w .@:/+-]{1,64}$")
FILE_VERSION = 1


class KeyStoreError(Exception):
    """The keys file cannot be read or written, or an argument is invalid."""


@dataclass
class KeyRecord:
    id: str
    name: str
    scopes: list[str]
    created: str
    revoked: str | None = None
    hash: str = field(default="", repr=False)

    @property
    def active(self) -> bool:
        return self.revoked is None

    def public(self) -> dict:
        """Everything but the hash (for `keys list`)."""
        data = asdict(self)
        data.pop("hash")
        return data


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def _digest(pepper: bytes, key: str) -> str:
    return hmac.new(pepper, key.encode("utf-8"), hashlib.sha256).hexdigest()


class KeyStore:
    """The keys file. Thread-safe; reloads when the file changes on disk."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._pepper = b""
        self._keys: dict[str, KeyRecord] = {}
        # Compared against when a key id is unknown, so that both paths hash and compare.
        self._dummy = "0" * 64

    # -- reading ----------------------------------------------------------------
    def _stat(self) -> tuple | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _read(self) -> tuple[bytes, dict[str, KeyRecord]]:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return b"", {}
        except OSError as exc:
            raise KeyStoreError(f"{self.path}: cannot read: {exc.strerror}") from None
        try:
            doc = json.loads(raw)
            pepper = bytes.fromhex(doc["pepper"])
            keys = {}
            for item in doc.get("keys", []):
                rec = KeyRecord(**item)
                keys[rec.id] = rec
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyStoreError(f"{self.path}: not a valid keys file ({type(exc).__name__})") from None
        return pepper, keys

    def refresh(self) -> None:
        """Re-read the file if it changed since the last read (one stat call otherwise)."""
        stamp = self._stat()
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            if stamp is not None and os.name == "posix":
                mode = self.path.stat().st_mode & 0o777
                if mode & 0o077:
                    log.warning("keys file %s is readable by others (mode %o); chmod 600 it", self.path, mode)
            try:
                self._pepper, self._keys = self._read()
            except KeyStoreError as exc:
                # Keep what we had: a half-edited file must not lock everyone out or let anyone in.
                log.error("%s; keeping the %d keys read before", exc, len(self._keys))
            self._stamp = stamp

    def records(self) -> list[KeyRecord]:
        self.refresh()
        return sorted(self._keys.values(), key=lambda r: r.created)

    def verify(self, key: str) -> KeyRecord | None:
        """The active record of ``key``, or None. Constant-time in the secret part."""
        self.refresh()
        m = _KEY.match(key or "")
        rec = self._keys.get(m.group(1)) if m else None
        expected = rec.hash if rec is not None else self._dummy
        ok = hmac.compare_digest(_digest(self._pepper or b"-", key or ""), expected)
        if ok and rec is not None and rec.active:
            return rec
        return None

    # -- writing (the `headline keys` CLI) ---------------------------------------
    @contextlib.contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            pepper, keys = self._read()
            yield pepper or secrets.token_bytes(32), keys
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _write(self, pepper: bytes, keys: dict[str, KeyRecord]) -> None:
        doc = {"version": FILE_VERSION, "pepper": pepper.hex(),
               "keys": [asdict(r) for r in sorted(keys.values(), key=lambda r: r.created)]}
        text = json.dumps(doc, indent=2) + "\n"
        # mkstemp creates the file 0600; rename keeps that mode and is atomic.
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._stamp = None  # our own reader re-reads next time

    def create(self, name: str, scopes: list[str]) -> tuple[KeyRecord, str]:
        """A new key: (its record, the plain key). The plain key is not kept anywhere."""
        if not _NAME.match(name or ""):
            raise KeyStoreError("name: 1-64 letters, digits, spaces or . _ @ : / + -")
        scopes = sorted(set(scopes))
        bad = [s for s in scopes if s not in SCOPES]
        if bad or not scopes:
            raise KeyStoreError(f"scopes: choose from {', '.join(SCOPES)} (got {', '.join(bad) or 'none'})")
        with self._locked() as (pepper, keys):
            key_id = secrets.token_hex(4)
            while key_id in keys:
                key_id = secrets.token_hex(4)
            plain = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
            rec = KeyRecord(id=key_id, name=name, scopes=scopes, created=_now(), hash=_digest(pepper, plain))
            keys[key_id] = rec
            self._write(pepper, keys)
        return rec, plain

    def revoke(self, key_id: str) -> KeyRecord:
        if not _ID.match(key_id or ""):
            raise KeyStoreError(f"id: expected 8 hex characters (see `headline keys list`), got {key_id!r}")
        with self._locked() as (pepper, keys):
            rec = keys.get(key_id)
            if rec is None:
                raise KeyStoreError(f"id: no key {key_id} in {self.path}")
            if rec.revoked is None:
                rec.revoked = _now()
                self._write(pepper, keys)
        return rec
