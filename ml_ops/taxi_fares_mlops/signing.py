"""Ed25519 keys for serving bundles: the packager signs the manifest's exact bytes with a private key, the service
verifies them with the matching public key (``taxi_fares_mlops.serving.bundle``).

Keys are PEM files: the private key PKCS#8 without a passphrase (it lives in CD's secret store, or, for local use
only, in a development key under ``MLOPS_HOME``), the public key SubjectPublicKeyInfo. A signature file holds the
64-byte signature in base64 on one line. Needs ``cryptography`` only: the service imports this without MLflow or
Spark.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import os
import stat
from pathlib import Path
from typing import Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from taxi_fares_mlops import environment
from taxi_fares_mlops.errors import MlopsError

logger = logging.getLogger(__name__)

SIGNING_KEY_ENV = environment.SIGNING_KEY_FILE.name   # the packager's private key (CD: a secure file)
TRUSTED_KEY_ENV = environment.TRUSTED_KEY_FILE.name   # the service's public key (AKS: a mounted ConfigMap)
DEVELOPMENT_KEY = Path("keys") / "bundle-signing.key"   # under MLOPS_HOME, for `mlops serving package --local`
DEVELOPMENT_PUBLIC_KEY = DEVELOPMENT_KEY.with_suffix(".pub")

KeySource = Union[str, Path]


class KeyFileError(MlopsError):
    """A key file is missing, unreadable, too open, or not an Ed25519 key of the expected kind."""


def _read(path: KeySource, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None


def load_private_key(path: KeySource) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(path, "signing key"), password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"signing key {path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"signing key {path} is a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(path: KeySource) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(_read(path, "trusted key"))
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"trusted key {path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"trusted key {path} is a {type(key).__name__}, not an Ed25519 public key")
    return key


def public_pem(key: Union[Ed25519PrivateKey, Ed25519PublicKey]) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def fingerprint(key: Union[Ed25519PrivateKey, Ed25519PublicKey]) -> str:
    """A short name for a key pair in messages: SHA-256 of the raw public key, first 16 hex digits."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(data: bytes, key: Ed25519PrivateKey) -> bytes:
    """The signature file's content for ``data``: base64 of the Ed25519 signature, one line."""
    return base64.b64encode(key.sign(data)) + b"\n"


def signature_valid(data: bytes, signature_file: bytes, key: Ed25519PublicKey) -> bool:
    """True when ``signature_file`` (as ``sign`` writes it) is ``key``'s signature of exactly ``data``."""
    try:
        signature = base64.b64decode(signature_file.strip(), validate=True)
        key.verify(signature, data)
    except (InvalidSignature, ValueError):  # binascii.Error is a ValueError
        return False
    return True


def development_key(home: KeySource) -> Path:
    """The development signing key under ``home`` (``MLOPS_HOME``), created on first use with mode 0600 and its
    public half beside it. A key others can read is refused, as ssh refuses one: chmod 600 it. Local use only:
    CD signs with a key from its secret store."""
    path = Path(home) / DEVELOPMENT_KEY
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return development_key(home)
        with os.fdopen(fd, "wb") as f:
            f.write(private_pem(key))
        path.with_suffix(".pub").write_bytes(public_pem(key))
        logger.info("created the development bundle-signing key %s (%s)", path, fingerprint(key))
        return path
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(f"development signing key {path} is readable by others (mode {mode:o}): chmod 600 it")
    public = path.with_suffix(".pub")
    if not public.exists():
        public.write_bytes(public_pem(load_private_key(path)))
    return path


def development_public_key(home: KeySource) -> Path:
    return Path(home) / DEVELOPMENT_PUBLIC_KEY
