"""Key files (.amifkey): JSON with a 32-byte secret, and the 256-value code derived from it.

code = HKDF-SHA256(secret, info = model id) mapped to +1/-1 (256 bits). The secret stays in the
key file: it is never printed, logged or written anywhere else. UIs and outputs show `key_id`.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import AMIFError
from .reading import read_small_file

KEY_FORMAT = "amif-key"
KEY_VERSION = 1
CODE_BITS = 256
KEY_FILE_LIMIT = 4096  # bytes: a key file is about 270; anything larger is refused unread


def hkdf_sha256(secret: bytes, info: bytes, length: int, salt: bytes = b"") -> bytes:
    """RFC 5869 HKDF with SHA-256."""
    prk = hmac.new(salt or b"\0" * 32, secret, hashlib.sha256).digest()
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


def code_from_secret(secret: bytes, model_id: str) -> np.ndarray:
    """The key code: 256 values of +1/-1 (float32)."""
    raw = hkdf_sha256(secret, model_id.encode("utf-8"), CODE_BITS // 8)
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))
    return bits.astype(np.float32) * 2.0 - 1.0


def fingerprint(secret: bytes, model_id: str) -> str:
    """Public key id: a short hash of the secret bound to the model id (reveals nothing of it)."""
    h = hashlib.sha256(b"amif-key-id\0" + model_id.encode("utf-8") + b"\0" + secret).hexdigest()
    return f"{h[:4]}-{h[4:8]}-{h[8:12]}-{h[12:16]}"


@dataclass(frozen=True)
class KeyFile:
    model_id: str
    key_id: str
    licensee: str
    created: str
    secret: bytes

    def __repr__(self) -> str:  # never show the secret
        return f"KeyFile(model_id={self.model_id!r}, key_id={self.key_id!r}, licensee={self.licensee!r})"

    __str__ = __repr__

    def code(self) -> np.ndarray:
        return code_from_secret(self.secret, self.model_id)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": KEY_FORMAT,
                "version": KEY_VERSION,
                "model_id": self.model_id,
                "key_id": self.key_id,
                "licensee": self.licensee,
                "created": self.created,
                "secret": base64.b64encode(self.secret).decode("ascii"),
            },
            indent=2,
        )


def generate_key(model_id: str, licensee: str, secret: bytes | None = None) -> KeyFile:
    if not model_id:
        raise AMIFError("A key needs a model id.")
    secret = secrets.token_bytes(32) if secret is None else secret
    if len(secret) != 32:
        raise AMIFError("A key secret must be 32 bytes.")
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    key = KeyFile(model_id, fingerprint(secret, model_id), licensee, created, secret)
    if len(key.to_json()) + 1 > KEY_FILE_LIMIT:  # load_key reads no more than this
        raise AMIFError(f"The model id and licensee name are too long for a key file (at most {KEY_FILE_LIMIT} bytes).")
    return key


def save_key(key: KeyFile, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write `key` to `path` (readable by its owner only), atomically (amif.files.atomic_output): the file
    appears complete or not at all. An existing file is never replaced unless `overwrite`, not even by a
    second writer racing this one: that is an AMIFError and nothing changes."""
    from .files import atomic_output

    path = Path(path)
    if os.path.lexists(path) and not overwrite:
        raise AMIFError(f"{path} exists already; refusing to overwrite a key file.")
    try:
        with atomic_output(path, replace=overwrite) as tmp:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(key.to_json() + "\n")
    except FileExistsError:
        raise AMIFError(f"{path} exists already; refusing to overwrite a key file.") from None
    return path


def load_key(path: str | os.PathLike) -> KeyFile:
    """Read and check a key file; every problem is an AMIFError naming the file and the reason. Only a
    regular file of at most KEY_FILE_LIMIT bytes is read (amif.reading)."""
    path = Path(path)
    name = path.name
    data = read_small_file(path, KEY_FILE_LIMIT, f"Key file {name}")
    try:
        text = data.decode("utf-8")
    except ValueError as e:  # undecodable bytes
        raise AMIFError(f"Key file {name} cannot be read: {e.__class__.__name__}.") from None
    try:
        d = json.loads(text)
    except (ValueError, RecursionError):  # bad JSON, an integer of thousands of digits, deep nesting
        raise AMIFError(f"Key file {name} is not valid JSON (damaged or not a key file).") from None
    if not isinstance(d, dict) or d.get("format") != KEY_FORMAT:
        raise AMIFError(f"{name} is not an AMIF key file (format is not '{KEY_FORMAT}').")
    if d.get("version") != KEY_VERSION:
        raise AMIFError(f"Key file {name} has version {d.get('version')!r}; this AMIF reads {KEY_VERSION}.")
    fields = {k: d.get(k) for k in ("model_id", "key_id", "licensee", "created", "secret")}
    for k, v in fields.items():
        if not isinstance(v, str):
            raise AMIFError(f"Key file {name} lacks the text field '{k}'.")
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escape such as "\ud800"
            raise AMIFError(f"Key file {name}: the field '{k}' is not valid text.") from None
    try:
        secret = base64.b64decode(fields["secret"], validate=True)
    except ValueError:
        raise AMIFError(f"Key file {name}: the secret is not valid base64.") from None
    if len(secret) != 32:
        raise AMIFError(f"Key file {name}: the secret must be 32 bytes, found {len(secret)}.")
    if fingerprint(secret, fields["model_id"]) != fields["key_id"]:
        raise AMIFError(f"Key file {name} is damaged: its key id does not match its secret.")
    return KeyFile(fields["model_id"], fields["key_id"], fields["licensee"], fields["created"], secret)
