"""``lumbar-ai synth-sheet STUDY_DIR [STUDY_DIR ...] [--out PNG]``: a contact sheet of generated studies."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.errors import SynthError

from .sheet import contact_sheet


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("studies", nargs="+", type=Path, help="study folders written by lumbar-ai synth")
    parser.add_argument("--out", type=Path, default=None,
                        help="PNG to write (default: STUDY_DIR/contact_sheet.png for one study, else sheet.png)")


def run(args: argparse.Namespace) -> int:
    for folder in args.studies:
        if not (folder / "truth.json").is_file():
            raise SynthError(f"{folder}: not a synthetic study folder (no truth.json)")
    out = args.out or (args.studies[0] / "contact_sheet.png" if len(args.studies) == 1 else Path("sheet.png"))
    path = contact_sheet(args.studies, out)
    print(path)
    return 0
