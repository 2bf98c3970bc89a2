"""``lumbar-ai worker``: load the model once, then process jobs until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from service.config import get_settings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", type=Path, help="model directory (default: settings.model_dir)")
    parser.add_argument("--name", help="consumer name in the workers group (default: worker-<host>-<pid>)")
    parser.add_argument("--no-deliver", action="store_true",
                        help="do not run the delivery and retention-sweep loop in this process "
                             "(run `lumbar-ai deliver` instead)")


def run(args: argparse.Namespace) -> int:
    from service.deliver.runner import start_thread
    from service.infer.model import OnnxModel
    from service.worker.loop import Worker

    settings = get_settings()
    model_dir = args.model_dir or settings.model_dir
    model = OnnxModel.load(model_dir, settings.onnx_providers, settings.intra_op_threads, settings.inter_op_threads)
    log.info("model %s %s loaded from %s (providers: %s)", model.card.get("name"), model.version, model_dir,
             ", ".join(model.providers))
    worker = Worker(settings, model, name=args.name)
    stop = threading.Event()

    def _stop(signum, _frame) -> None:
        log.info("signal %d: finishing the current job, then stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    deliverer = None
    if not args.no_deliver:  # also sweeps results past the retention, destinations or not
        deliverer = start_thread(settings, stop, f"deliver-{worker.name}")
    worker.run(stop)
    if deliverer is not None:
        deliverer.join(timeout=settings.deliver_timeout_s + 5)
    log.info("worker %s stopped", worker.name)
    return 0
