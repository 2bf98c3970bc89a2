"""Log lines carry no patient data and no raw hostile strings, whatever the libraries put in them."""

from __future__ import annotations

import io
import logging
import warnings

from service.logs import MAX_MESSAGE_CHARS, WITHHELD, install, redact


def test_values_quoted_by_pydicom_are_withheld_and_our_own_messages_kept():
    assert redact("Invalid value for VR DA: '19xx0101'.", quotes_values=True) == f"Invalid value for VR DA: {WITHHELD}."
    assert redact("job 1.2.3 done in 0.5 s", quotes_values=False) == "job 1.2.3 done in 0.5 s"


def test_control_characters_are_escaped_and_long_messages_cut():
    assert redact("uid 1.2\x1b[31m\r\nfake line", quotes_values=False) == "uid 1.2\\x1b[31m\\x0d\nfake line"
    long = redact("x" * 5000, quotes_values=False)
    assert len(long) < MAX_MESSAGE_CHARS + 40 and long.endswith("characters cut)")


def test_a_redacting_handler_withholds_what_library_warnings_quote():
    buffer = io.StringIO()
    handler = install(logging.StreamHandler(buffer))
    root = logging.getLogger()
    root.addHandler(handler)
    logging.captureWarnings(True)
    try:
        logging.getLogger("pydicom").warning("Invalid value for VR PN: 'DOE^JANE'")
        warnings.warn('The string "DOE JANE" is unlikely to represent the intended person name', UserWarning,
                      stacklevel=1)
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
    text = buffer.getvalue()
    assert "DOE" not in text and text.count(WITHHELD) >= 1 and "Invalid value for VR PN" in text
