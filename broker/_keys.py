"""``zstream keys generate``: CURVE key pairs in pyzmq's ``zmq.auth`` format.

``NAME.key`` holds the public key (share it: it goes into a key set, a
``peer_keys_dir`` or ``client_credentials_dir``); ``NAME.key_secret`` holds the pair
and is written with mode 0600 (it never leaves the machine that uses it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import zmq.auth

__all__ = ["KEY_NAME", "KeyGenerationError", "generate_key_pair"]

# Principal names and node ids: what a key file may be named.
KEY_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")


class KeyGenerationError(Exception):
    """The key pair cannot be written (bad name, existing files, no directory)."""


def generate_key_pair(name: str, out_dir: Path, *, force: bool = False) -> tuple[Path, Path]:
    """Write ``out_dir/NAME.key`` and ``out_dir/NAME.key_secret`` (0600); return both."""
    if not KEY_NAME.fullmatch(name):
        raise KeyGenerationError(f"bad key name {name!r}: use [A-Za-z0-9_.-], not starting with .")
    out_dir.mkdir(parents=True, exist_ok=True)
    public, secret = out_dir / f"{name}.key", out_dir / f"{name}.key_secret"
    if not force and (public.exists() or secret.exists()):
        raise KeyGenerationError(f"{public} or {secret} exists (--force replaces them)")
    for path in (public, secret):
        path.unlink(missing_ok=True)
    # Created under umask 077, so the secret is never readable by others, not even
    # for the moment before the chmod.
    old_umask = os.umask(0o077)
    try:
        zmq.auth.create_certificates(out_dir, name)
    except OSError as exc:
        raise KeyGenerationError(f"cannot write keys into {out_dir}: {exc}") from exc
    finally:
        os.umask(old_umask)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    return public, secret
