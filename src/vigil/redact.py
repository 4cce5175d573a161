"""Secrets out of everything vigil shows or writes: one helper that masks credentials in URIs.

``redact(text)`` masks, wherever a URI appears in ``text`` (an error message, a log line, a
record field):

- the password of ``scheme://user:password@host`` -> ``scheme://user:***@host``;
- a lone user-info of 16 characters or more, a token (``https://TOKEN@host``) -> ``https://***@host``
  (a short one is a user name: ``postgresql://vigil@db/x`` stays);
- query-string values of secret-looking keys (``token``, ``password``, ``secret``, ``key``,
  ``signature``, ``sig``, ``credential``, ``auth``...) -> ``?token=***``.

``redact_obj`` applies it to every string of a JSON-like structure (records, answers).
``RedactingFilter`` applies it to log records; ``install_log_redaction()`` puts one on the root
logger's handlers, which is what ``vigil serve``/``retrain``/``schedule`` call at start-up, so
an MLflow error that quotes a credentialed ``MLFLOW_TRACKING_URI`` never reaches the log.
"""

from __future__ import annotations

import logging
import re
from typing import Any

MASK = "***"
_TOKEN_MIN_LENGTH = 16

# scheme://userinfo@ : userinfo is everything up to the last '@' before the host part
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^/\s@?#'\"]+)@")
_SECRET_KEYS = (
    r"(?:[a-z0-9_\-]*(?:token|password|passwd|pwd|secret|signature|sig|credential|auth|"
    r"api[_\-]?key|access[_\-]?key|private[_\-]?key|sas)[a-z0-9_\-]*|key)"
)
_QUERY_SECRET = re.compile(rf"(?P<key>[?&;]{_SECRET_KEYS}=)(?P<value>[^&#\s'\"]+)", re.IGNORECASE)


def _mask_userinfo(match: re.Match) -> str:
    userinfo = match.group("userinfo")
    user, sep, _ = userinfo.partition(":")
    if not sep:  # a user name stays; a long lone user-info is a token (https://TOKEN@host)
        masked = MASK if len(userinfo) >= _TOKEN_MIN_LENGTH else userinfo
    else:
        masked = f"{user}:{MASK}"
    return f"{match.group('scheme')}{masked}@"


def redact(text: str) -> str:
    """``text`` with URI passwords, user-info tokens and secret query values masked."""
    if not isinstance(text, str) or ("://" not in text and "=" not in text):
        return text
    text = _USERINFO.sub(_mask_userinfo, text)
    return _QUERY_SECRET.sub(lambda m: f"{m.group('key')}{MASK}", text)


def redact_obj(value: Any) -> Any:
    """A copy of a JSON-like ``value`` (dicts, lists, tuples, strings) with every string
    redacted; other values are returned as they are."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_obj(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_obj(item) for item in value)
    return value


class RedactingFilter(logging.Filter):
    """A logging filter that redacts a record's message (formatted with its arguments) and its
    exception text in place; it never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Add a ``RedactingFilter`` to every handler of ``logger`` (default: the root logger),
    once; records reach handlers after their loggers' filters, so this covers every logger."""
    logger = logger or logging.getLogger()
    for handler in logger.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
