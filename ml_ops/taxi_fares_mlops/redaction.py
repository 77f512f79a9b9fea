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
_PATTERNS = (
    # connection-string fields whose value is a secret
    (re.compile(r"(?i)\b(AccountKey|SharedAccessSignature|SharedAccessKey|InstrumentationKey|ClientSecret|"
                r"Password|Pwd)=([^;\s'\"]+)"), rf"\1={MASK}"),
    # a SAS signature (and the key it names) in a URL's query, however it is quoted
    (re.compile(r"(?i)([?&](?:sig|skoid|sktid|sv_token)=)[^&\s'\"]+"), rf"\1{MASK}"),
    # HTTP authorization headers and bearer tokens, as the Azure SDK logs them at DEBUG
    (re.compile(r"(?i)\b(Authorization['\"]?\s*[:=]\s*['\"]?)(Bearer|Basic|SharedKey|ApiKey)?\s*[^\s'\",}]+"),
     rf"\1\2 {MASK}"),
    (re.compile(r"(?i)\bBearer\s+[A-Za-z0-9._~+/=-]{8,}"), f"Bearer {MASK}"),
    # a JWT anywhere (three base64url parts, the first a JSON header)
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), MASK),
    # Databricks personal access tokens
    (re.compile(r"\bdapi[0-9a-f]{32}(?:-\d+)?\b"), f"dapi{MASK}"),
    # user:password@ in a URL
    (re.compile(r"(//)[^/@\s:]+:[^/@\s]+@"), rf"\1{MASK}@"),
    # key=value pairs named like secrets (client_secret=..., "token": "...")
    (re.compile(r"(?i)\b((?:client_)?secret|token|api_key|apikey|password)(['\"]?\s*[:=]\s*['\"]?)[^\s'\",;&}]+"),
     rf"\1\2{MASK}"),
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
