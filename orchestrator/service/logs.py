"""Structured logs for the HTTP service: one JSON object per line on stderr.

Every record carries ``time`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``, plus the
fields a caller passes with ``extra=`` (``request_id``, ``route``, ``status``, ``duration_ms``...).
Two guards keep what must not be logged out of the lines, whoever logs:

* fields named like secrets (``authorization``, ``token``, ``password``...) are written as
  ``"[redacted]"``;
* query text (the ``query`` and ``user_query`` fields) is dropped unless ``log_queries`` is on:
  queries can identify people, so keeping them is an explicit choice (``LTRR_LOG_QUERIES``).
"""

from __future__ import annotations

import logging
import traceback
from datetime import UTC, datetime
from typing import Any

import orjson

QUERY_FIELDS = frozenset({"query", "user_query", "normalized"})
SECRET_MARKERS = ("authorization", "token", "password", "secret", "cookie", "api_key", "apikey")
REDACTED = "[redacted]"

# What every LogRecord has; anything else came in through ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName",
                                                                              "color_message"}  # uvicorn's ANSI copy


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return any(marker in lowered for marker in SECRET_MARKERS)


class JsonFormatter(logging.Formatter):
    """A :class:`logging.Formatter` writing one JSON object per record (see the module docstring)."""

    def __init__(self, log_queries: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.log_queries = bool(log_queries)

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name in _STANDARD or name.startswith("_"):
                continue
            if name in QUERY_FIELDS and not self.log_queries:
                continue
            line[name] = REDACTED if _is_secret(name) else value
        if record.exc_info and record.exc_info[0] is not None:
            line["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            line["exception"] = record.exc_text
        return orjson.dumps(line, default=_fallback, option=orjson.OPT_NON_STR_KEYS).decode()


def _fallback(value: Any) -> str:
    return str(value)


def logging_config(level: str = "info", *, log_queries: bool = False) -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` dictionary: JSON lines on stderr for the root logger and
    uvicorn's (uvicorn applies it in each worker process); uvicorn's own access log is off, the
    service logs each request itself with its request id."""
    level_name = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter", "log_queries": log_queries}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": level_name},
        "loggers": {
            "uvicorn": {"handlers": [], "level": level_name, "propagate": True},
            "uvicorn.error": {"handlers": [], "level": level_name, "propagate": True},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            # opensearch-py logs every request (with its body) at INFO/DEBUG: bodies hold query text.
            "opensearch": {"handlers": [], "level": "WARNING", "propagate": True},
            "opensearchpy.trace": {"handlers": [], "level": "WARNING", "propagate": False},  # curl lines with bodies
        },
    }
