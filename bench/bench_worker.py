"""Worker time per study split by stage, and throughput with 1 and 2 worker processes.

    .venv/bin/python bench/bench_worker.py [--model-dir models/lumbar-ai-1] [--peer-model-dir models/demo]
        [--studies 4] [--model-bench-json F]

The study is generated: two 15-slice 512x512 sagittal series (T2, T1), the issue's target case. Stages
come from the worker's own timings (decode, resample, preprocess, image encoder, fusion head, findings,
postprocess, SEG, SR, preview, write) plus one C-STORE of the three DICOM results to dcmtk's storescp
(delivery). Throughput runs real ``lumbar-ai worker`` processes against Redis on --studies copies of the
study: 1 worker with --threads ONNX Runtime threads, then 2 workers with half as many each (the same
cores). Printed as ratios: per-study time against the 5 s target, against the peer model's (models/demo,
the model ``make demo`` trained before a model was shipped, when it is there) on the same study in the same
run, 2 workers against 1, and, when the model bench's JSON is given (bench/bench_model.py --json), ONNX
Runtime against torch.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_S = 5.0


def generate(folder: Path, seed: int) -> Path:
    from model_export.synth import SynthConfig, generate_study

    config = SynthConfig(use_spider=False, include_axial=False, include_localizer=False, matrix=(512, 512),
                         slices=(15, 15))
    generate_study(folder, seed=seed, config=config)
    return folder


def spool_copy(study_dir: Path, spool_dir: Path, copy: int) -> tuple[str, dict[str, str], list[tuple[str, int]]]:
    """Copy the study's sagittal series into the spool layout under new UIDs (copy 0 keeps its own)."""
    import pydicom

    study_uid, series, sizes = "", {}, []
    for name in ("sag_t2", "sag_t1"):
        for path in sorted((study_dir / "dicom" / name).glob("*.dcm")):
            ds = pydicom.dcmread(path)
            if copy:
                for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
                    setattr(ds, keyword, pydicom.uid.generate_uid(entropy_srcs=[str(ds[keyword].value), str(copy)]))
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            target = spool_dir / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(buffer.getvalue())
            study_uid = str(ds.StudyInstanceUID)
            series[name] = str(ds.SeriesInstanceUID)
            sizes.append((str(ds.SOPInstanceUID), len(buffer.getvalue())))
    return study_uid, series, sizes


def make_job(study_uid: str, series: dict[str, str], sizes):
    from service.queue.jobs import Job, make_job_id

    return Job(make_job_id(study_uid, sizes), study_uid, series.get("sag_t2"), series.get("sag_t1"))


def stage_times(settings, model, job, repeats: int) -> dict[str, float]:
    from service.worker.pipeline import process_job

    process_job(job, model, settings)  # warm-up: first runs allocate and pick kernels
    runs = [process_job(job, model, settings).timings for _ in range(repeats)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def delivery_time(settings, study_uid: str, repeats: int) -> float | None:
    from service.config import Destination
    from service.deliver.scu import send_files
    from service.encode.results import DICOM_KINDS, FILE_NAMES

    exe = shutil.which("storescp")
    if exe is None:
        return None
    from tests.conftest import free_port

    port = free_port()
    with tempfile.TemporaryDirectory() as received:
        pacs = subprocess.Popen([exe, "-od", received, "-aet", "PACS", "+uf", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            paths = [settings.results_dir / study_uid / FILE_NAMES[k] for k in DICOM_KINDS]
            destination = Destination(ae_title="PACS", host="127.0.0.1", port=port)
            times = []
            for _ in range(repeats + 1):
                started = time.perf_counter()
                send_files(destination, paths, "LUMBAR_AI", 30.0)
                times.append(time.perf_counter() - started)
        finally:
            pacs.terminate()
            pacs.wait()
    return statistics.median(times[1:])


def throughput(settings, jobs, workers: int, threads: int, log: Path) -> float:
    """Studies per minute with ``workers`` worker processes sharing ``threads`` ONNX Runtime threads."""
    import redis

    from service.queue.state import StudyState, StudyStore
    from service.queue.stream import JobQueue

    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "LUMBAR_AI_REDIS_URL": settings.redis_url, "LUMBAR_AI_DATA_DIR": str(settings.data_dir),
           "LUMBAR_AI_STREAM_PREFIX": prefix, "LUMBAR_AI_MODEL_DIR": str(settings.model_dir),
           "LUMBAR_AI_INTRA_OP_THREADS": str(max(1, threads // workers)), "LUMBAR_AI_DESTINATIONS": "[]",
           "LUMBAR_AI_FSYNC": "false", "LUMBAR_AI_WORKER_HEARTBEAT_S": "0.5"}
    client = redis.Redis.from_url(settings.redis_url)
    procs = [subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--name", f"bench-{i}"], cwd=ROOT,
                              env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT) for i in range(workers)]
    try:
        deadline = time.monotonic() + 120
        while client.hlen(f"{prefix}:workers") < workers:  # models loaded: start timing only now
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers did not start; see {log}")
            time.sleep(0.1)
        store, queue = StudyStore(client, prefix), JobQueue(client, settings, prefix=prefix)
        started = time.perf_counter()
        for job in jobs:
            store.ensure(job.study_uid)
            queue.enqueue(job)
        pending = {job.study_uid for job in jobs}
        while pending:
            pending = {uid for uid in pending if store.get(uid).state not in (StudyState.DONE, StudyState.FAILED)}
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
    return len(jobs) / elapsed * 60.0


def torch_ratio(bench_json: Path | None) -> tuple[float, str] | None:
    """ONNX Runtime vs torch eager as bench/bench_model.py measured it (warm, repeated runs).

    The model card's export-parity timings are single cold runs (ONNX Runtime's first call allocates its
    arenas), so they are not quoted as a speed ratio.
    """
    if bench_json is not None and bench_json.is_file():
        figures = json.loads(bench_json.read_text())
        return figures["speedup_onnxruntime_over_torch"], f"bench/bench_model.py ({bench_json})"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models" / "lumbar-ai-1")
    parser.add_argument("--peer-model-dir", type=Path, default=ROOT / "models" / "demo",
                        help="model timed on the same study for the ratio (skipped when absent)")
    parser.add_argument("--studies", type=int, default=4, help="studies per throughput run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--redis-url", default=os.environ.get("LUMBAR_AI_REDIS_URL", "redis://127.0.0.1:6379/14"))
    parser.add_argument("--model-bench-json", type=Path, default=None)
    args = parser.parse_args()

    from service.config import Settings
    from service.infer.model import OnnxModel

    if not (args.model_dir / "model.json").is_file():
        print(f"no model at {args.model_dir}: pass --model-dir (the shipped model is models/lumbar-ai-1)")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        study_dir = generate(tmp / "study", seed=20261128)
        settings = Settings(data_dir=tmp / "data", model_dir=args.model_dir, intra_op_threads=args.threads,
                            redis_url=args.redis_url, fsync=False, destinations=[])
        copies = [spool_copy(study_dir, settings.spool_dir, i) for i in range(max(2, args.studies))]
        jobs = [make_job(*c) for c in copies]
        model = OnnxModel.load(args.model_dir, settings.onnx_providers, args.threads, 1)
        stages = stage_times(settings, model, jobs[0], args.repeats)
        deliver = delivery_time(settings, jobs[0].study_uid, args.repeats)
        per_study = stages["total"] + (deliver or 0.0)
        print(f"model {model.card.get('name')} {model.version} ({args.model_dir}), input {model.view.to_card()}, "
              f"{args.threads} ONNX Runtime threads, study 2 x 15 x 512 x 512")
        print(f"stage                      seconds (median of {args.repeats})")
        for key, value in stages.items():
            if key not in ("total", "infer_total"):
                print(f"  {key:24s} {value:8.3f}")
        print(f"  {'delivery (C-STORE x3)':24s} {deliver:8.3f}" if deliver is not None else "  delivery: no storescp")
        print(f"  {'total per study':24s} {per_study:8.3f}")
        print(f"ratio per-study time / target {TARGET_S:g} s: {per_study / TARGET_S:.2f} "
              f"({'met' if per_study <= TARGET_S else 'NOT met'})")
        if (args.peer_model_dir / "model.json").is_file():
            peer = OnnxModel.load(args.peer_model_dir, settings.onnx_providers, args.threads, 1)
            peer_settings = settings.model_copy(update={"model_dir": args.peer_model_dir})
            peer_total = stage_times(peer_settings, peer, jobs[0], args.repeats)["total"] + (deliver or 0.0)
            print(f"peer {peer.card.get('name')} {peer.version} ({args.peer_model_dir}): {peer_total:.3f} s per "
                  f"study; ratio model / peer = {per_study / peer_total:.2f}")
        else:
            print(f"no peer model at {args.peer_model_dir}: per-study ratio against a peer not measured")
        log = tmp / "workers.log"
        one = throughput(settings, jobs, 1, args.threads, log)
        two = throughput(settings, [make_job(*spool_copy(study_dir, settings.spool_dir, 100 + i))
                                    for i in range(len(jobs))], 2, args.threads, log)
        print(f"throughput, {len(jobs)} studies: 1 worker {one:.1f} studies/min, 2 workers {two:.1f} studies/min, "
              f"ratio 2/1 = {two / one:.2f}")
        ratio = torch_ratio(args.model_bench_json)
        if ratio is not None:
            print(f"ONNX Runtime speed-up over torch eager: {ratio[0]:.2f} (target >= 1.5; from {ratio[1]})")
        else:
            print("ONNX Runtime vs torch eager: run bench/bench_model.py (or pass --model-bench-json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
