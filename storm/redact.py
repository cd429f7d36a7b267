"""Log redaction: bearer tokens and JWTs never reach a log line (docs/security.md, "Secrets in logs").

The code never logs a token on purpose (tests/service/test_logs.py captures every record during auth
failures to check it).  This filter is the safety net for what a library or a future log line might
print: installed on the handlers of the root logger by the CLI (:func:`install`), it rewrites anything
shaped like a JWT (``xxx.yyy.zzz`` of base64url, starting ``eyJ``) or an ``Authorization: Bearer`` value,
in the message, its arguments and the formatted exception, before any handler writes it.
"""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")
_SECRET_KV = re.compile(r"(?i)((?:token|secret|password|authorization)[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&]{8,}")


def redact(text: str) -> str:
    text = _JWT.sub(REDACTED, text)
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    return _SECRET_KV.sub(lambda m: m.group(1) + REDACTED, text)


class SecretRedactor(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the handler to report
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install(logger: logging.Logger | None = None) -> SecretRedactor:
    """Add the redactor to every handler of ``logger`` (default: the root logger).  Idempotent."""
    target = logger or logging.getLogger()
    redactor = SecretRedactor()
    for handler in target.handlers:
        if not any(isinstance(f, SecretRedactor) for f in handler.filters):
            handler.addFilter(redactor)
    return redactor
