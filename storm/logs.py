"""Log format: one readable line, or one JSON object per line for Datadog's log pipeline (STORM_LOG_FORMAT).

The JSON shape uses Datadog's standard attributes, so its pipeline needs no custom parsing: ``timestamp``
(ISO 8601, UTC, ms), ``status`` (the level), ``message``, ``logger.name``, ``logger.thread_name``,
``error.kind``/``error.message``/``error.stack``, the unified service tags ``service``, ``env``, ``version``
(and ``ddtags`` with env and version), and the ids that tie a line to a connection: ``session_id`` and
``workspace`` when the line names them (``session=…``, ``ws=…``, as the session core writes them, or
``extra={"session_id": …}``) and ``request_id`` when given.  Secrets stay redacted: the
:mod:`storm.redact` filter runs before this formatter, and the formatter redacts once more what it writes.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime

from storm.config import ConfigError
from storm.redact import redact

_SESSION = re.compile(r"\bsession=([0-9a-f]{6,32})")
_WORKSPACE = re.compile(r"\bws=([a-z0-9][a-z0-9-]{0,62})")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class JsonFormatter(logging.Formatter):
    def __init__(self, *, service: str, env: str = "", version: str = "") -> None:
        super().__init__()
        self.service = service
        self.env = env
        self.version = version
        self._ddtags = ",".join(f"{k}:{v}" for k, v in (("env", env), ("version", version)) if v)

    def format(self, record: logging.LogRecord) -> str:
        message = redact(record.getMessage())
        doc: dict[str, object] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "status": record.levelname.lower(),
            "message": message,
            "logger": {"name": record.name, "thread_name": record.threadName},
            "service": self.service,
            "ddsource": "python",
        }
        if self.env:
            doc["env"] = self.env
        if self.version:
            doc["version"] = self.version
        if self._ddtags:
            doc["ddtags"] = self._ddtags
        session = getattr(record, "session_id", None) or _first(_SESSION, message)
        if session:
            doc["session_id"] = session
        workspace = getattr(record, "workspace", None) or _first(_WORKSPACE, message)
        if workspace:
            doc["workspace"] = workspace
        request_id = getattr(record, "request_id", None)
        if request_id:
            doc["request_id"] = request_id
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
            exc = record.exc_info[1]
            doc["error"] = {"kind": type(exc).__name__, "message": redact(str(exc)), "stack": redact(record.exc_text)}
        elif record.exc_text:
            doc["error"] = {"stack": redact(record.exc_text)}
        return json.dumps(doc, ensure_ascii=False, default=str)


def _first(pattern: re.Pattern[str], text: str) -> str | None:
    match = pattern.search(text)
    return match.group(1) if match else None


def configure(env: Mapping[str, str], *, service: str, logger: logging.Logger | None = None) -> str:
    """Give the handlers of ``logger`` (default root) the format of ``STORM_LOG_FORMAT``; returns it.

    ``service`` is ``DD_SERVICE`` when set, else the given role; ``DD_ENV``/``DD_VERSION`` are added.  Read
    here from the environment (the variables are declared in :class:`storm.config.Config`) because the log
    format is needed before a command builds its configuration."""
    fmt = env.get("STORM_LOG_FORMAT", "text").strip().lower() or "text"
    if fmt not in FORMATS:
        raise ConfigError(f"STORM_LOG_FORMAT={fmt!r}: expected one of {', '.join(FORMATS)}")
    target = logger or logging.getLogger()
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter(service=env.get("DD_SERVICE") or service, env=env.get("DD_ENV", ""),
                                  version=env.get("DD_VERSION", ""))
    else:
        formatter = logging.Formatter(TEXT_FORMAT)
    for handler in target.handlers:
        handler.setFormatter(formatter)
    return fmt
