"""Secrets never reach a log line: one filter on every handler the entry points configure, at every level.

``redact`` replaces what a credential looks like, wherever it appears in a message, its arguments or a traceback:
an account key or SAS in a connection string, a SAS signature in a URL, a bearer token or JWT, a Databricks token,
an Application Insights instrumentation key, a password in a URL. It errs on the side of hiding: an operator
reading ``***`` loses nothing they need, and a leaked key cannot be taken back.
"""
from __future__ import annotations

import logging
import re

MASK = "***"
# A name ends where a letter or digit does not follow (``\b`` would not end it before ``_``: DATABRICKS_TOKEN=...).
_START = r"(?<![A-Za-z0-9])"
_SECRET_NAMES = (r"(?:[A-Za-z0-9]+_)*(?:client_secret|secret|token|access_token|refresh_token|id_token|api_key|apikey|"
                 r"x-api-key|account_key|password|passwd|pwd|credential|credentials|private_key|sas|sas_token)")
_PATTERNS = (
    # a PEM private key, whole
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S), MASK),
    # connection-string fields whose value is a secret
    (re.compile(r"(?i)" + _START + r"(AccountKey|SharedAccessSignature|SharedAccessKey|InstrumentationKey|"
                r"ClientSecret|Password|Pwd)=([^;\s'\"]+)"), rf"\1={MASK}"),
    # a SAS signature in a URL's query, however it is quoted or encoded
    (re.compile(r"(?i)([?&](?:sig|skoid|sktid)=)[^&\s'\"]+"), rf"\1{MASK}"),
    (re.compile(r"(?i)((?:%3F|%26)(?:sig|skoid|sktid)%3D)[^%&\s'\"]+"), rf"\1{MASK}"),
    # HTTP authorization headers and bearer tokens, as the Azure SDK logs them at DEBUG
    (re.compile(r"(?i)" + _START + r"(Authorization['\"]?\s*[:=]\s*['\"]?)(Bearer|Basic|SharedKey|ApiKey)?\s*"
                r"[^\s'\",}]+"), rf"\1\2 {MASK}"),
    (re.compile(r"(?i)" + _START + r"Bearer\s+[A-Za-z0-9._~+/=-]{8,}"), f"Bearer {MASK}"),
    # a JWT anywhere (three base64url parts, the first a JSON header)
    (re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), MASK),
    # Databricks personal access tokens
    (re.compile(r"(?<![A-Za-z0-9])(?:dapi|dose|dkea)[0-9a-f]{32}(?:-\d+)?(?![0-9a-f])"), MASK),
    # user:password@ in a URL
    (re.compile(r"(//)[^/@\s:]+:[^/@\s]+@"), rf"\1{MASK}@"),
    # NAME=value / "name": "value" pairs named like secrets; a value of at least 8 characters that is not a plain
    # number, so "token: 403" or "secret: scope taxi-fares" keep what the operator needs
    (re.compile(r"(?i)" + _START + r"(" + _SECRET_NAMES + r")(['\"]?\s*[:=]\s*['\"]?)"
                r"(?![0-9]+(?:[\s'\",;&}]|$))([^\s'\",;&}]{8,})"), rf"\1\2{MASK}"),
)


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record's message (arguments merged) and its traceback with ``redact`` before any handler
    formats it. Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave its formatting error to the handler, as logging does
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def protect(handler: logging.Handler) -> logging.Handler:
    """``handler`` with the redacting filter (added once)."""
    if not any(isinstance(f, RedactingFilter) for f in handler.filters):
        handler.addFilter(RedactingFilter())
    return handler


def protect_all(logger: logging.Logger | None = None) -> None:
    """Every handler of ``logger`` (default: the root logger) gets the redacting filter."""
    for handler in (logger or logging.getLogger()).handlers:
        protect(handler)
