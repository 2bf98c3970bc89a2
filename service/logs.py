"""Logging for every process: one format, Python warnings routed into it, and nothing of the patient.

Our own messages carry UIDs, counts, durations and statuses only. The libraries' do not: pydicom warns
``Invalid value for VR DA: '19xx0101'`` (a birth date) and highdicom ``The string "DOE JANE" is unlikely to
represent ...`` (a name), and a hostile peer can put control characters or kilobytes into a UID that a
library then logs. So every record passes :class:`RedactingFilter` on its way to a handler: values quoted by
pydicom, highdicom and the warnings module are withheld, control characters are escaped, and each message is
cut to MAX_MESSAGE_CHARS.
"""

from __future__ import annotations

import logging
import re

MAX_MESSAGE_CHARS = 500
QUOTING_LOGGERS = ("pydicom", "highdicom", "py.warnings")
"""Loggers whose messages quote element values (patient data among them)."""
_QUOTED = re.compile(r"""'[^']*'|"[^"]*\"""")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
WITHHELD = "'<value withheld>'"


def redact(message: str, quotes_values: bool) -> str:
    """The message with quoted values withheld (when ``quotes_values``), control characters escaped and at
    most MAX_MESSAGE_CHARS long."""
    if quotes_values:
        message = _QUOTED.sub(WITHHELD, message)
    message = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", message)
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + f"... ({len(message) - MAX_MESSAGE_CHARS} characters cut)"
    return message


class RedactingFilter(logging.Filter):
    """A handler filter: rewrites each record's message through :func:`redact` (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        quotes_values = any(record.name == name or record.name.startswith(name + ".") for name in QUOTING_LOGGERS)
        message = redact(record.getMessage(), quotes_values)
        record.msg, record.args = message, None
        if record.exc_info and quotes_values:  # a library's traceback may quote a value too
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info), True)
            record.exc_info = None
        return True


def install(handler: logging.Handler) -> logging.Handler:
    if not any(isinstance(f, RedactingFilter) for f in handler.filters):
        handler.addFilter(RedactingFilter())
    return handler


def configure_logging(verbose: bool = False) -> None:
    """The root logger for a command: our format, warnings as log records, every handler redacting."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.captureWarnings(True)
    for handler in logging.getLogger().handlers:
        install(handler)
