"""``lumbar-ai``: one command, one sub-command per job.

Each sub-command lives in the module of its stage, which defines ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their sub-command runs, so ``lumbar-ai listen``
never loads torch and the service image needs no training extras. The model_export commands are looked
up by name here rather than imported, which keeps ``service`` free of imports from ``model_export``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

# sub-command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("model_export.synth.cli_synth", "generate synthetic lumbar MRI studies with ground truth"),
    "synth-sheet": ("model_export.synth.cli_sheet", "write a PNG contact sheet of a generated study"),
    "train": ("model_export.cli_train", "train the text-guided model or a baseline (checkpoints, curves)"),
    "evaluate": ("model_export.cli_evaluate", "compare models on held-out studies (Dice, IoU, findings, tests)"),
    "export": ("model_export.cli_export", "export a checkpoint to a checked ONNX model directory"),
    "train-levels": ("model_export.cli_train_levels", "train a checkpoint's level classifier (findings from fine crops)"),
    "train-outlines": ("model_export.cli_train_outlines", "train the outline refiner (each disc and vertebra redrawn close up)"),
    "tune-thresholds": ("model_export.cli_tune", "set a checkpoint's finding thresholds on a validation set"),
    "build-demo-model": ("model_export.demo_model", "build models/demo when absent (generate, train, export)"),
    "pretrain": ("model_export.cli_pretrain", "self-supervised pretraining: FCMAE image encoder, CLIP/SimCSE text encoder"),
    "listen": ("service.receive.cli", "run the DICOM listener and the study assembler (receive, assemble, enqueue)"),
    "api": ("service.api.cli", "serve the REST API, the web page (/ui) and the metrics"),
    "worker": ("service.worker.cli", "run inference jobs from the queue: SEG, SR, preview and report, then deliver"),
    "deliver": ("service.deliver.runner", "send results to the configured PACS destinations; sweep expired results"),
    "demo": ("service.demo", "run the whole pipeline locally on a generated study (the README's main command)"),
}


def _load(name: str) -> ModuleType:
    module_name = COMMANDS[name][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and not exc.name.startswith(("service", "model_export")):
            raise SystemExit(
                f"lumbar-ai {name}: missing dependency {exc.name!r}; "
                f"install the extras it needs (pip install 'lumbar-ai[train]' for model commands)"
            ) from exc
        raise


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lumbar-ai", description="Lumbar spine MRI AI service and model tools.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = next((a for a in argv if a in COMMANDS), None)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:  # only the chosen command's module is imported
            _load(name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    from service.logs import configure_logging

    configure_logging(args.verbose)
    from service.errors import LumbarAIError

    try:
        return int(_load(args.command).run(args) or 0)
    except LumbarAIError as exc:
        print(f"lumbar-ai {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
