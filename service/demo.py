"""``lumbar-ai demo``: the whole pipeline on this machine, on a study the model never saw.

Runs the model shipped with the project (or the one named by --model-dir or LUMBAR_AI_MODEL_DIR; with
--build-demo-model it first trains models/demo on generated studies), starts Redis (only when none
answers), the listener, a worker, the API and a PACS stand-in (dcmtk ``storescp``) as subprocesses,
generates a synthetic study with a seed outside the training range, sends it with a real C-STORE (dcmtk ``storescu``), waits for the result and prints the
findings per level and where the SEG, SR and preview are. Ctrl-C stops the processes it started, and only
those: each runs in its own session and is stopped by its own process group id.

The model_export package is reached through importlib only (``service`` never imports it), so a service
install without the training extras can still run the demo on a DICOM folder (``--study``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from service.config import get_settings
from service.demo_processes import DemoError, Started, free_port, wait_until
from service.errors import ConfigError

HELD_OUT_SEEDS = (900_000, 999_999)
"""Seeds of the demo study: far from the training seeds (10 000 + n) and the evaluation seeds."""
OUR_AE, PACS_AE, SENDER_AE = "LUMBAR_AI", "DEMO_PACS", "DEMO_MODALITY"
STREAM_PREFIX = "lumbar-ai-demo"
"""Keys of the demo in Redis stay apart from a deployment that shares the same Redis."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", type=Path,
                        help="use this exported model directory (default: LUMBAR_AI_MODEL_DIR, else the shipped model)")
    parser.add_argument("--build-demo-model", action="store_true",
                        help="train models/demo on generated studies first and use it (the retraining path)")
    parser.add_argument("--models-dir", type=Path, default=Path("models"),
                        help="with --build-demo-model: where models/demo is built")
    parser.add_argument("--build-budget", type=float, default=900.0,
                        help="with --build-demo-model: seconds for building the model")
    parser.add_argument("--data-dir", type=Path, default=Path("var/demo"), help="spool, results, PACS, logs")
    parser.add_argument(
        "--seed", type=int, help=f"seed of the generated study (default: random in {HELD_OUT_SEEDS})"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the result")
    parser.add_argument("--quiet-period", type=float, default=3.0, help="study quiet period in seconds")
    parser.add_argument("--api-port", type=int, default=0, help="API port (default: a free port)")
    parser.add_argument(
        "--exit-after-result", action="store_true", help="stop everything once results are in"
    )
    parser.add_argument(
        "--small-study", action="store_true", help="generate a small study (CI smoke runs with a tiny model)"
    )
    parser.add_argument(
        "--study", type=Path, help="send this folder of DICOM files (one study) instead of a generated study"
    )


def _redis_answers(url: str) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        client.ping()
        client.close()
        return True
    except redis.RedisError:
        return False


def _ensure_model(args: argparse.Namespace, settings_model_dir: Path) -> Path:
    """The model directory the demo runs: --model-dir, a freshly built models/demo, or the settings' one
    (LUMBAR_AI_MODEL_DIR, else the model shipped with the project)."""
    if args.model_dir is not None:
        if not (args.model_dir / "model.json").is_file():
            raise ConfigError(f"--model-dir {args.model_dir} has no model.json")
        return args.model_dir
    if not args.build_demo_model:
        if not (settings_model_dir / "model.json").is_file():
            raise ConfigError(f"the model directory {settings_model_dir} has no model.json: set LUMBAR_AI_MODEL_DIR, "
                              "pass --model-dir, or train one with --build-demo-model")
        return settings_model_dir
    try:
        demo_model = importlib.import_module("model_export.demo_model")
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"cannot build the demo model ({exc.name} is not installed): install the [train] extra "
            "or pass --model-dir with an exported model"
        ) from exc
    target = args.models_dir / "demo"
    if not (target / "model.json").is_file():
        print(
            f"Building the demo model in {target} (first run only; at most {args.build_budget / 60:.0f} min)..."
        )
    return Path(demo_model.ensure_demo_model(args.models_dir, budget_s=args.build_budget))


def _generate_study(out_dir: Path, seed: int, small: bool) -> tuple[str, Path, dict]:
    synth = importlib.import_module("model_export.synth")
    config = None
    if small:
        overrides = importlib.import_module("model_export.synth.config").SMALL_TEST_CONFIG
        config = synth.SynthConfig(use_spider=False, **overrides)
    pydicom_log = logging.getLogger("pydicom")
    level = pydicom_log.level
    pydicom_log.setLevel(logging.ERROR)  # the generator's pydicom deprecation notes are not the demo's news
    try:
        truth = synth.generate_study(out_dir, seed=seed, config=config)
    finally:
        pydicom_log.setLevel(level)
    return truth.study_instance_uid, out_dir / "dicom", truth.positive_levels()


def find_dcmtk(name: str) -> str | None:
    """The first ``name`` on PATH that is dcmtk's, not pynetdicom's.

    pynetdicom installs Python apps called storescp, storescu and echoscu, with other options, in the
    environment's bin folder, which an activated virtual environment puts first on PATH.
    """
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = shutil.which(name, path=folder) if folder else None
        if path is None:
            continue
        with open(path, "rb") as f:
            head = f.readline(256)
        if not (head.startswith(b"#!") and b"python" in head):
            return path
    return None


def _pacs_command(port: int, out_dir: Path) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    storescp = find_dcmtk("storescp")
    if storescp is None:
        raise ConfigError("dcmtk's storescp is missing (make demo installs dcmtk with apt-get)")
    return [storescp, "--aetitle", PACS_AE, "--output-directory", str(out_dir), "+xa", str(port)]


def _send_study(dicom_dir: Path, port: int, log: Path) -> None:
    storescu = find_dcmtk("storescu")
    if storescu is None:
        raise ConfigError("dcmtk's storescu is missing (make demo installs dcmtk with apt-get)")
    cmd = [storescu, "-aet", SENDER_AE, "-aec", OUR_AE, "+sd", "+r", "127.0.0.1", str(port), str(dicom_dir)]
    with open(log, "ab") as out:
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=300)
    if result.returncode != 0:
        raise DemoError(f"storescu failed with status {result.returncode}; see {log}")


def _get(url: str, key: str | None = None, timeout: float = 5.0, method: str = "GET") -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(url, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def _existing_study(folder: Path) -> str:
    """StudyInstanceUID of the first DICOM file under ``folder`` (the demo sends one study)."""
    import pydicom

    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        try:
            return str(
                pydicom.dcmread(
                    path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]
                ).StudyInstanceUID
            )
        except Exception:  # not DICOM (a DICOMDIR's neighbours, a README): look further
            continue
    raise ConfigError(f"--study {folder}: no DICOM file with a StudyInstanceUID found")


def _print_findings(report: dict, truth_positive: dict | None) -> None:
    levels = report.get("levels", [])
    print(
        f"\n{len(levels)} structure(s) found; findings per level (probability, * = above the model's threshold):"
    )
    for level in levels:
        size = f"{level['volume_mm3'] / 1000:6.1f} mL" if level.get("volume_mm3") is not None else ""
        height = f"height {level['disc_height_mm']:.1f} mm" if level.get("disc_height_mm") else ""
        if level.get("posterior_extent_mm") is not None:
            height += f", {level['posterior_extent_mm']:+.1f} mm behind the bodies"
        cells = ", ".join(
            f"{f['name']} {f['probability']:.2f}{'*' if f['present'] else ''}"
            for f in level.get("findings") or []
        )
        print(f"  {level.get('structure', '?'):<14} {size:>9}  {' '.join(x for x in (height, cells) if x)}")
    positives = report.get("positive_findings") or []
    summary = "; ".join(f"{p['structure']}: {p['finding']}" for p in positives) or "none"
    print(f"Positive findings: {summary}")
    if truth_positive is not None:
        truth = "; ".join(
            f"{lv}: {', '.join(k.replace('_', ' ') for k in ks)}" for lv, ks in truth_positive.items()
        )
        print(f"Ground truth of the generated study: {truth or 'no abnormality'}")
    if report.get("statement"):
        print(report["statement"])


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    data_dir = args.data_dir.resolve()
    logs = data_dir / "logs"
    started = Started()
    stop_requested = False

    def _on_signal(signum, _frame) -> None:
        raise KeyboardInterrupt

    # installed explicitly: a shell that starts the demo in the background leaves SIGINT ignored
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        model_dir = _ensure_model(args, settings.model_dir).resolve()
        redis_url = settings.redis_url
        if not _redis_answers(redis_url):
            redis_server = shutil.which("redis-server")
            if redis_server is None:
                raise ConfigError(f"no Redis answers at {redis_url} and redis-server is not installed")
            port = free_port()
            redis_dir = logs.parent / "redis"
            redis_dir.mkdir(parents=True, exist_ok=True)
            cmd = [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                   "--dir", str(redis_dir)]  # fmt: skip
            started.start("redis", cmd, dict(os.environ), logs)
            redis_url = f"redis://127.0.0.1:{port}/0"
            wait_until("Redis", lambda: _redis_answers(redis_url), 20, started, 0.1)
            print(f"Started Redis on port {port} (none answered at {settings.redis_url})")

        key = secrets.token_urlsafe(24)
        dicom_port, pacs_port = free_port(), free_port()
        api_port = args.api_port or free_port()
        env = {
            **os.environ,
            "LUMBAR_AI_REDIS_URL": redis_url,
            "LUMBAR_AI_STREAM_PREFIX": STREAM_PREFIX,
            "LUMBAR_AI_DATA_DIR": str(data_dir),
            "LUMBAR_AI_MODEL_DIR": str(model_dir),
            "LUMBAR_AI_QUIET_PERIOD_S": str(args.quiet_period),
            "LUMBAR_AI_SERIES_SETTLE_S": str(min(args.quiet_period, 2.0)),
            "LUMBAR_AI_AE_TITLE": OUR_AE,
            "LUMBAR_AI_LISTEN_HOST": "127.0.0.1",
            "LUMBAR_AI_LISTEN_PORT": str(dicom_port),
            "LUMBAR_AI_ALLOWED_CALLING_AETS": "[]",
            "LUMBAR_AI_ALLOWED_IPS": "[]",
            "LUMBAR_AI_API_HOST": "127.0.0.1",
            "LUMBAR_AI_API_PORT": str(api_port),
            "LUMBAR_AI_API_KEYS": json.dumps([key]),
            "LUMBAR_AI_DESTINATIONS": json.dumps(
                [{"ae_title": PACS_AE, "host": "127.0.0.1", "port": pacs_port}]
            ),
            "LUMBAR_AI_DISK_RESERVE_MB": "64",
            "LUMBAR_AI_DELIVER_BACKOFF_S": "1",
        }
        env.pop("LUMBAR_AI_API_KEYS_FILE", None)  # the demo's key only
        cli = [sys.executable, "-m", "service.cli"]
        pacs_dir = data_dir / "pacs"
        started.start("pacs", _pacs_command(pacs_port, pacs_dir), env, logs)
        started.start("listener", [*cli, "listen"], env, logs)
        started.start("worker", [*cli, "worker"], env, logs)
        started.start("api", [*cli, "api"], env, logs)
        base = f"http://127.0.0.1:{api_port}"
        print(
            f"Started the DICOM listener ({OUR_AE} on port {dicom_port}), a worker, the API ({base}) "
            f"and a PACS stand-in ({PACS_AE} on port {pacs_port}); logs in {logs}"
        )
        wait_until(
            "the API and a worker with the model loaded (see the worker log)",
            lambda: _get(f"{base}/readyz")[0] == 200,
            300,
            started,
        )

        with tempfile.TemporaryDirectory(prefix="lumbar-ai-demo-study-") as tmp:
            if args.study is not None:
                study_uid, dicom_dir, truth_positive = _existing_study(args.study), args.study, None
                what = f"Sending study {study_uid} from {args.study}"
            else:
                seed = args.seed if args.seed is not None else random.randint(*HELD_OUT_SEEDS)
                study_uid, dicom_dir, truth_positive = _generate_study(
                    Path(tmp) / "study", seed, args.small_study
                )
                what = f"Generated study {study_uid} (seed {seed}, never seen in training)"
            count = sum(1 for p in dicom_dir.rglob("*") if p.is_file())
            print(f"{what}: {count} files; sending it with storescu...")
            _get(
                f"{base}/studies/{study_uid}", key, method="DELETE"
            )  # a rerun of the same study starts afresh
            sent_at = time.time()
            _send_study(dicom_dir, dicom_port, logs / "storescu.log")

        last_state = None

        def finished() -> dict | None:
            nonlocal last_state
            status, body = _get(f"{base}/studies/{study_uid}", key)
            if status != 200:
                return None
            detail = json.loads(body)
            if detail["state"] != last_state:
                last_state = detail["state"]
                print(f"  {time.time() - sent_at:6.1f} s  {last_state}")
            return detail if detail["state"] in ("done", "failed") else None

        detail = wait_until("the result", finished, args.timeout, started)
        if detail["state"] == "failed":
            raise DemoError(f"study failed: {detail.get('error')}; see {started.logs['worker']}")
        report = json.loads(_get(f"{base}/studies/{study_uid}/report", key)[1])
        _print_findings(report, truth_positive)
        results = data_dir / "results" / study_uid
        delivered = _wait_until_delivered(pacs_dir, started)
        print(
            f"\nResults in {results}: " + ", ".join(sorted(p.name for p in results.iterdir() if p.is_file()))
        )
        print(f"Delivered to the PACS stand-in over C-STORE: {delivered} instance(s) in {pacs_dir}")
        print(f"API:       {base}/docs   (API key: {key})")
        print(f"Web page:  {base}/ui#key={key}&study={study_uid}")
        print(f"Metrics:   curl -H 'Authorization: Bearer {key}' {base}/metrics")
        if args.exit_after_result:
            return 0
        print("\nRunning; press Ctrl-C to stop everything the demo started.")
        while True:
            started.check_alive()
            time.sleep(1)
    except KeyboardInterrupt:
        stop_requested = True
        return 130
    finally:
        if started.processes:
            print(
                "Stopping " + ", ".join(reversed(list(started.processes))) + ("..." if stop_requested else "")
            )
        for sig in previous:  # a second Ctrl-C must not leave processes behind half-way through stopping
            signal.signal(sig, signal.SIG_IGN)
        started.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait_until_delivered(pacs_dir: Path, started: Started, timeout_s: float = 60.0) -> int:
    """Instances the PACS stand-in has received; waits a little for the delivery step to finish."""

    def count() -> int:
        return sum(1 for p in pacs_dir.iterdir() if p.is_file()) if pacs_dir.is_dir() else 0

    try:
        wait_until("delivery to the PACS stand-in", lambda: count() >= 2, timeout_s, started)
    except DemoError:
        pass  # reported as the count below; the results are on disk and in the API either way
    return count()
