"""The DICOM UID grammar, checked before a UID becomes part of a spool path.

PS3.5 9.1: at most 64 characters, components of digits separated by single dots. The grammar also forbids
leading zeros in a component ("1.02"); some modalities emit them anyway and PACS retry refusals for ever,
so they are tolerated: what makes a UID safe as a path part is that it is digits and dots only, which
excludes "/", "..", NUL, spaces and every other character a path could be steered with.
"""

from __future__ import annotations

import re

from service.errors import InvalidUIDError

_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
MAX_UID_LENGTH = 64


def validate_uid(value: object, attribute: str) -> str:
    """The UID as a plain string, or InvalidUIDError naming the attribute (never its value's context)."""
    if value is None:
        raise InvalidUIDError(f"{attribute} is missing")
    text = str(value).rstrip("\x00 ")  # UI values are padded to even length with NUL; some senders use space
    if not text:
        raise InvalidUIDError(f"{attribute} is empty")
    if len(text) > MAX_UID_LENGTH:
        raise InvalidUIDError(f"{attribute} is {len(text)} characters long (at most {MAX_UID_LENGTH})")
    if _UID.fullmatch(text) is None:
        # repr of a UID is safe to show (UIDs are not patient data) but cap it: it may be garbage
        raise InvalidUIDError(f"{attribute} {text[:80]!r} does not follow the DICOM UID grammar")
    return text


def is_valid_uid(value: object) -> bool:
    try:
        validate_uid(value, "UID")
    except InvalidUIDError:
        return False
    return True
