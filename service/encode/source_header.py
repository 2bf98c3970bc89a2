"""Patient and study attributes of the source study, made fit to copy into the results.

highdicom copies the Patient and General Study modules from the source images into every SEG, SR and
secondary capture, reads them as attributes, and refuses values outside their VR or enumeration. Real
studies, anonymised ones above all, often lack Type 2 attributes (AccessionNumber, StudyID,
ReferringPhysicianName) or carry values such as PatientSex ``0000``; the listener accepts them, so the
encoder must build results from them. Each attribute is checked here once per source header: absent ones
become empty (Type 2: present, zero length) and a value that would be refused becomes empty with a warning
that names the keyword, never the value (it is patient data).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from highdicom.enum import SpecificCharacterSetValues
from pydicom.dataset import Dataset
from pydicom.valuerep import DA, TM

PATIENT_SEX_VALUES = ("M", "F", "O")
SHORT_STRING_MAX = 16
LONG_STRING_MAX = 64
PERSON_NAME_COMPONENT_MAX = 64


def _date(value: object) -> bool:
    return DA(str(value)) is not None


def _time(value: object) -> bool:
    return TM(str(value)) is not None


def _short_string(value: object) -> bool:
    text = str(value)
    return len(text) <= SHORT_STRING_MAX and "\\" not in text


def _long_string(value: object) -> bool:
    text = str(value)
    return len(text) <= LONG_STRING_MAX and "\\" not in text


def _person_name(value: object) -> bool:
    """One name of at most five components per group, each within the PN length."""
    text = str(value)
    if "\\" in text:
        return False
    groups = text.split("=")
    return len(groups) <= 3 and all(
        len(group.split("^")) <= 5 and all(len(part) <= PERSON_NAME_COMPONENT_MAX for part in group.split("^"))
        for group in groups
    )


def _patient_sex(value: object) -> bool:
    return str(value) in PATIENT_SEX_VALUES


COPIED_ATTRIBUTES: dict[str, Callable[[object], bool]] = {
    "PatientName": _person_name,
    "PatientID": _long_string,
    "PatientBirthDate": _date,
    "PatientSex": _patient_sex,
    "AccessionNumber": _short_string,
    "StudyID": _short_string,
    "StudyDate": _date,
    "StudyTime": _time,
    "ReferringPhysicianName": _person_name,
}
"""The Type 2 attributes highdicom copies from the source into each result, with the test a value must pass."""


CHARACTER_SETS = frozenset(term.value for term in SpecificCharacterSetValues)
"""The SpecificCharacterSet terms highdicom writes."""
DEFAULT_REPERTOIRE = ("", "ISO_IR 6")
"""Value 1 meaning the default repertoire: absent or empty (PS3.3 C.12.1.1.2); some devices write ISO_IR 6."""
UTF8 = "ISO_IR 192"


def conform_character_set(ds: Dataset) -> str | None:
    """SpecificCharacterSet in the terms highdicom writes, in place; a warning when it had to change.

    The text values were decoded when the header was read, so any character set that encodes them all
    will do: the default repertoire written as its ISO 2022 term where code extensions follow, and UTF-8
    for a term highdicom does not know."""
    if "SpecificCharacterSet" not in ds:
        return None
    value = ds.SpecificCharacterSet
    terms = [str(term).strip() for term in ([value] if isinstance(value, str) else value)]
    if len(terms) == 1 and terms[0] in DEFAULT_REPERTOIRE:
        del ds.SpecificCharacterSet
        return None
    if len(terms) > 1 and terms[0] in DEFAULT_REPERTOIRE:
        terms[0] = "ISO 2022 IR 6"
    if all(term in CHARACTER_SETS for term in terms):
        ds.SpecificCharacterSet = terms if len(terms) > 1 else terms[0]
        return None
    ds.SpecificCharacterSet = UTF8
    return "source attribute SpecificCharacterSet has a term the results cannot carry; results written in UTF-8"


def conform_source_headers(datasets: Iterable[Dataset]) -> list[str]:
    """Make every copied attribute of these headers present and acceptable, in place; the warnings.

    The headers are the worker's own copies (read from the spool, pixel data dropped), so the spool keeps
    the study as it was received."""
    blanked: list[str] = []
    notes: list[str] = []
    for ds in datasets:
        note = conform_character_set(ds)
        if note and note not in notes:
            notes.append(note)
        for keyword, acceptable in COPIED_ATTRIBUTES.items():
            if keyword not in ds or ds[keyword].value is None:
                setattr(ds, keyword, "")
                continue
            value = ds[keyword].value
            if value == "":
                continue
            if not _passes(acceptable, value):
                setattr(ds, keyword, "")
                if keyword not in blanked:
                    blanked.append(keyword)
            elif keyword == "PatientName" and "^" not in str(value):
                setattr(ds, keyword, _family_name_only(str(value)))
    return [*notes, *(f"source attribute {keyword} has a value the results cannot carry; left empty in SEG, SR "
                      "and preview" for keyword in blanked)]


def _family_name_only(name: str) -> str:
    """``Bono`` as ``Bono^``: the same name (trailing carets may be omitted), which highdicom accepts without
    the warning it would otherwise log with the name in it."""
    alphabetic, _, rest = name.partition("=")
    return f"{alphabetic}^" + (f"={rest}" if rest else "")


def _passes(acceptable: Callable[[object], bool], value: object) -> bool:
    try:
        return bool(acceptable(value))
    except (ValueError, TypeError, OverflowError):
        return False
