"""Who may call the online service: one FastAPI route dependency (``Authenticator``), on every route but the probes.

Two modes, and ``none`` for loopback (see ``taxi_fares_mlops.serving.__main__``, which refuses to start without
authentication on any other address):

* ``entra``: Microsoft Entra ID access tokens, ``Authorization: Bearer <token>``. The signature is checked
  against the tenant's JSON Web Key Set (PyJWT's ``PyJWKClient``: the key set is cached for ``jwks_cache_seconds``
  and fetched again at most once per ``jwks_cooldown_seconds`` for a key id it does not hold, so a key rotation
  is picked up and a flood of made-up key ids is not a flood of fetches). The key set, not single keys, is
  cached: a key the tenant withdraws stops verifying when the cached set expires. Then issuer (v1 and/or v2),
  audience, expiry and not-before with ``leeway_seconds``; RS256 only (``none`` and HS* are refused before any
  key is looked up). The token's ``roles`` claim must hold ``required_role``, else 403: the role is required to
  start, since any application of the tenant can get a token for the API's audience.
* ``api-key``: keys from a mounted secret file, one per line (several at once, for rotation), sent as
  ``Authorization: Bearer <key>``. Kept as SHA-256 digests and compared in constant time with every key, so
  neither timing nor an early exit says which key or how much of one matched.

A refused caller gets 401 with a ``WWW-Authenticate: Bearer`` challenge (``error="invalid_token"`` and a short
fixed description: nothing the caller sent is echoed). The ``Caller`` names who called for telemetry: the
token's ``azp``/``appid`` and ``oid``, or the key's position and fingerprint; never a token or a key.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool

logger = logging.getLogger(__name__)

ENTRA, API_KEY, NONE = "entra", "api-key", "none"
MODES = (ENTRA, API_KEY, NONE)
LEEWAY_SECONDS = 60.0
JWKS_CACHE_SECONDS = 300.0
JWKS_COOLDOWN_SECONDS = 30.0
JWKS_TIMEOUT_SECONDS = 5.0
MIN_KEY_CHARS = 16
REALM = "taxi_fares"
ALGORITHMS = ["RS256"]


class AuthConfigError(ValueError):
    """The authentication settings cannot work; the message names the setting."""


def v1_issuer(tenant: str) -> str:
    return f"https://sts.windows.net/{tenant}/"


def v2_issuer(tenant: str) -> str:
    return f"https://login.microsoftonline.com/{tenant}/v2.0"


def tenant_jwks_url(tenant: str) -> str:
    return f"https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys"


@dataclass(frozen=True)
class AuthSettings:
    mode: str = NONE
    tenant: Optional[str] = None
    audiences: tuple[str, ...] = ()
    issuers: tuple[str, ...] = ()          # default: the tenant's v1 and v2 issuers
    jwks_url: Optional[str] = None         # default: the tenant's key set
    required_role: Optional[str] = None
    api_keys_file: Optional[str] = None
    leeway_seconds: float = LEEWAY_SECONDS
    jwks_cache_seconds: float = JWKS_CACHE_SECONDS
    jwks_cooldown_seconds: float = JWKS_COOLDOWN_SECONDS

    @property
    def trusted_issuers(self) -> tuple[str, ...]:
        return self.issuers or ((v1_issuer(self.tenant), v2_issuer(self.tenant)) if self.tenant else ())

    @property
    def key_set_url(self) -> Optional[str]:
        return self.jwks_url or (tenant_jwks_url(self.tenant) if self.tenant else None)

    def checked(self) -> "AuthSettings":
        problems = []
        if self.mode not in MODES:
            problems.append(f"--auth must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == ENTRA:
            if not self.audiences:
                problems.append("--auth entra needs --entra-audience (the API's client id or App ID URI)")
            if not self.trusted_issuers:
                problems.append("--auth entra needs --entra-tenant or --entra-issuer")
            if not self.key_set_url:
                problems.append("--auth entra needs --entra-tenant or --jwks-url")
            if not (self.required_role or "").strip():
                problems.append("--auth entra needs --required-role (an app role assigned to the callers: without "
                                "it any application of the tenant that can get a token for this API is admitted)")
            if self.leeway_seconds < 0 or self.jwks_cache_seconds <= 0 or self.jwks_cooldown_seconds < 0:
                problems.append("the token leeway and key-set cooldown must not be negative, the cache positive")
        if self.mode == API_KEY and not self.api_keys_file:
            problems.append("--auth api-key needs --api-keys-file (a mounted secret file, one key per line)")
        if self.mode != API_KEY and self.api_keys_file:
            problems.append("--api-keys-file is given but --auth is not api-key")
        if problems:
            raise AuthConfigError("authentication settings: " + "; ".join(problems))
        return self


@dataclass(frozen=True)
class Caller:
    """Who called: what telemetry records (never the credential itself)."""

    kind: str                              # entra | api-key | anonymous
    app_id: Optional[str] = None           # the calling application (azp in v2 tokens, appid in v1)
    object_id: Optional[str] = None        # the caller's object id (oid): a user or a service principal
    key_index: Optional[int] = None        # the key's line among the configured keys (0-based)
    key_fingerprint: Optional[str] = None  # the first 12 hex digits of the key's SHA-256

    def attributes(self) -> dict:
        values = {"caller.kind": self.kind, "caller.app_id": self.app_id, "caller.oid": self.object_id,
                  "caller.key_index": self.key_index, "caller.key_fingerprint": self.key_fingerprint}
        return {k: v for k, v in values.items() if v is not None}


ANONYMOUS = Caller("anonymous")


def challenge(error: Optional[str] = None, description: Optional[str] = None) -> str:
    parts = [f'Bearer realm="{REALM}"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append(f'error_description="{description}"')
    return ", ".join(parts)


def unauthorized(description: str, error: Optional[str] = "invalid_token") -> HTTPException:
    return HTTPException(401, detail=f"not authenticated: {description}",
                         headers={"WWW-Authenticate": challenge(error, description)})


def bearer(request: Request) -> str:
    """The credential of ``Authorization: Bearer <credential>``; a 401 for a missing or malformed header."""
    values = request.headers.getlist("authorization")
    if not values:
        raise HTTPException(401, detail="not authenticated: send Authorization: Bearer <token>",
                            headers={"WWW-Authenticate": challenge()})
    scheme, _, credential = values[0].strip().partition(" ")
    credential = credential.strip()
    if len(values) > 1 or scheme.lower() != "bearer" or not credential or " " in credential:
        raise unauthorized("the Authorization header must be 'Bearer <token>'", error="invalid_request")
    return credential


def read_api_keys(path: str) -> list[str]:
    """The keys of a key file: one per line; blank lines and ``#`` comments skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthConfigError(f"--api-keys-file {path}: cannot be read ({type(exc).__name__})") from None
    keys = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise AuthConfigError(f"--api-keys-file {path} holds no key")
    short = [i for i, key in enumerate(keys) if len(key) < MIN_KEY_CHARS]
    if short:
        raise AuthConfigError(f"--api-keys-file {path}: the key(s) on non-blank line(s) {[i + 1 for i in short]} "
                              f"are shorter than {MIN_KEY_CHARS} characters")
    return keys


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


class ApiKeys:
    def __init__(self, keys: list[str]):
        self.digests = [_digest(k) for k in keys]

    def match(self, presented: str) -> Optional[Caller]:
        digest = _digest(presented)
        found = None
        for index, known in enumerate(self.digests):  # every key, always: no early exit to time
            if hmac.compare_digest(digest, known) and found is None:
                found = index
        if found is None:
            return None
        return Caller(API_KEY, key_index=found, key_fingerprint=self.digests[found].hex()[:12])


class EntraTokens:
    """Entra ID access tokens, verified against the tenant's key set."""

    def __init__(self, settings: AuthSettings):
        from jwt import PyJWKClient

        self.settings = settings
        self.issuers = list(settings.trusted_issuers)
        self.audiences = list(settings.audiences)
        self.keys = PyJWKClient(settings.key_set_url, cache_keys=False, cache_jwk_set=True,
                                lifespan=settings.jwks_cache_seconds, timeout=JWKS_TIMEOUT_SECONDS,
                                cooldown_duration=settings.jwks_cooldown_seconds)

    def verify(self, token: str) -> Caller:
        """The caller of a valid token; an HTTPException (401, 403, or 503 when the key set is unreachable)."""
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise unauthorized("the token is malformed") from None
        if header.get("alg") not in ALGORITHMS:  # before any key lookup: alg none and HS* never reach a key
            raise unauthorized("the token is not signed with RS256")
        try:
            key = self.keys.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            logger.warning("the signing keys at %s cannot be fetched: %s", self.settings.key_set_url, exc)
            raise HTTPException(503, detail="the token's signing keys cannot be fetched; retry later",
                                headers={"Retry-After": "5"}) from None
        except (jwt.PyJWKClientError, jwt.InvalidTokenError):
            raise unauthorized("the token is not signed by a key of the tenant") from None
        try:
            claims = jwt.decode(token, key.key, algorithms=ALGORITHMS, audience=self.audiences,
                                issuer=self.issuers, leeway=self.settings.leeway_seconds,
                                options={"require": ["exp", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            raise unauthorized("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise unauthorized("the token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise unauthorized("the token is not for this service") from None
        except jwt.InvalidIssuerError:
            raise unauthorized("the token's issuer is not trusted") from None
        except jwt.InvalidSignatureError:
            raise unauthorized("the token's signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise unauthorized(f"the token has no {exc.claim} claim") from None
        except jwt.InvalidTokenError:
            raise unauthorized("the token is malformed") from None
        role = self.settings.required_role
        roles = claims.get("roles")
        if role and not (isinstance(roles, list) and role in roles):
            raise HTTPException(403, detail=f"forbidden: the caller lacks the app role '{role}'",
                                headers={"WWW-Authenticate": challenge("insufficient_scope",
                                                                       f"the app role '{role}' is required")})
        return Caller(ENTRA, app_id=_claim(claims, "azp") or _claim(claims, "appid"), object_id=_claim(claims, "oid"))


def _claim(claims: dict, name: str) -> Optional[str]:
    value = claims.get(name)
    return value[:64] if isinstance(value, str) and value else None


class Authenticator:
    """The route dependency: ``Depends(authenticator)`` gives the route its ``Caller`` or refuses the request."""

    def __init__(self, settings: AuthSettings):
        self.settings = settings.checked()
        self.mode = settings.mode
        self.tokens = EntraTokens(settings) if settings.mode == ENTRA else None
        self.api_keys = ApiKeys(read_api_keys(settings.api_keys_file)) if settings.mode == API_KEY else None

    async def __call__(self, request: Request) -> Caller:
        if self.mode == NONE:
            return ANONYMOUS
        credential = bearer(request)
        if self.api_keys is not None:
            caller = self.api_keys.match(credential)
            if caller is None:
                raise unauthorized("the API key is not valid")
            return caller
        # In a thread: the key set may have to be fetched (on expiry or an unknown key id), a blocking call.
        return await run_in_threadpool(self.tokens.verify, credential)
