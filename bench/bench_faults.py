"""Fault injection on loopback: what is lost, and what is done twice, when processes die; memory under large
loads; what hostile inputs get back.

Every scenario runs the real processes (`lumbar-ai listen`, `worker`, `api`), a private redis-server and
dcmtk's storescp as the PACS, with bounded loops, and prints its figures:

- listener: SIGKILLed ``--kills`` times while a PACS-like sender (resending a study whose association broke)
  sends ``--studies`` studies; acknowledged instances lost, studies queued exactly once;
- worker: SIGKILLed in the middle of jobs ``--kills`` times; studies done once, delivered exactly once;
- Redis without persistence: SIGKILLed and restarted empty with jobs queued and deliveries pending;
  studies processed and delivered exactly once (from what the spool and results hold);
- memory: the listener's and the API's peak RSS under large instances, zip bombs and large uploads
  (bench_memory.py; ``--memory quick`` for smaller loads, ``off`` to skip);
- hostile inputs over C-STORE and POST /studies, with the status each got;
- patient name, ID and birth date of every study sent: lines of any process's log that contain them.

A tiny model (the worker tests' committed spine-bands model) does the inference:
what is measured is the service around it.

    .venv/bin/python bench/bench_faults.py [--studies 8] [--kills 4] [--memory full|quick|off]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import redis
from pydicom.uid import ExplicitVRLittleEndian

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_receive import free_port  # noqa: E402

from service.queue.state import StudyState, StudyStore  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402
from tests.service.deliver.pacs import StoreSCP  # noqa: E402
from tests.service.worker.conftest import (  # noqa: E402
    TINY_BANDS_MODEL,
    enqueue,
    make_settings,
    settings_env,
    spool_files,
    write_study,
)

ROOT = Path(__file__).resolve().parent.parent
PATIENT = {"PatientName": "FAULTBENCH^SECRET", "PatientID": "FB-77310", "PatientBirthDate": "19450102"}
SEG, SR, SC = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"
LOGS: list[Path] = []


@dataclass
class Rig:
    """One scenario's Redis, PACS, settings and processes."""

    work: Path
    redis: RedisServer
    pacs: StoreSCP
    settings: object
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, **settings_env(self.settings), "PYTHONPATH": str(ROOT),
                **{f"LUMBAR_AI_{k.upper()}": v for k, v in extra.items()}}

    def start(self, name: str, *args: str, **extra: str) -> subprocess.Popen:
        log = self.work / f"{name}.log"
        LOGS.append(log)
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", *args], cwd=self.work, env=self.env(**extra),
                                stdout=log.open("ab"), stderr=subprocess.STDOUT)
        self.processes[name] = proc
        return proc

    def kill(self, name: str) -> None:
        proc = self.processes[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def close(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.pacs.stop()
        self.redis.stop()

    def store(self) -> StudyStore:
        return StudyStore(redis.Redis(port=self.redis.port), self.settings.stream_prefix)


def make_rig(work: Path, model_dir: Path, persistent: bool = True, **overrides) -> Rig:
    work.mkdir(parents=True)
    (work / "redis").mkdir()
    server = RedisServer(work / "redis", persistent=persistent)
    server.start()
    pacs = StoreSCP(work / "pacs", free_port()).start()
    settings = make_settings(server.url, work / "data", model_dir, pacs_port=pacs.port, listen_port=free_port(),
                             **overrides)
    return Rig(work, server, pacs, settings)


def hospital_study(folder: Path, seed: int) -> list[Path]:
    """A two-series spine-bands study (15 slices of 256 x 256) carrying a patient name, ID and birth date."""
    files = [p for paths in write_study(folder, seed=seed, shape=(15, 64, 64), upsample=4).values() for p in paths]
    for path in files:
        ds = pydicom.dcmread(path)
        for keyword, value in PATIENT.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
    return files


def wait_until(predicate, timeout_s: float, interval_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval_s)
    return None


def wait_for_listener(port: int, timeout_s: float = 60) -> bool:
    from pynetdicom import AE, build_context
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    def answers() -> bool:
        assoc = AE(ae_title="PACS").associate("127.0.0.1", port, [build_context(Verification)], ae_title="LUMBAR_AI")
        if assoc.is_established:
            assoc.release()
            return True
        return False

    return bool(wait_until(answers, timeout_s, 0.2))


def send_until_complete(port: int, files: list[Path], acknowledged: set[str], stop_at: float) -> bool:
    """What a PACS does: send the study over one association; when it breaks, wait and send it all again."""
    from pynetdicom import AE, build_context
    from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    while time.monotonic() < stop_at:
        ae = AE(ae_title="PACS")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        assoc = ae.associate("127.0.0.1", port, [build_context(MRImageStorage, ExplicitVRLittleEndian)],
                             ae_title="LUMBAR_AI")
        sent = 0
        if assoc.is_established:
            for path, uid in zip(files, uids, strict=True):
                try:
                    status = assoc.send_c_store(path)
                except Exception:
                    break
                if not assoc.is_established or "Status" not in status or status.Status != 0x0000:
                    break
                acknowledged.add(uid)
                sent += 1
            if sent == len(files):
                assoc.release()
                return True
            assoc.abort()
        time.sleep(0.3)
    return False


def delivered_per_study(pacs: StoreSCP) -> dict[str, Counter]:
    counts: dict[str, Counter] = {}
    for path in pacs.folder.rglob("*"):
        if path.is_file():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            counts.setdefault(str(ds.StudyInstanceUID), Counter())[str(ds.SOPClassUID)] += 1
    return counts


def exactly_once(counts: dict[str, Counter], studies: list[str]) -> int:
    return sum(counts.get(uid) == Counter({SEG: 1, SR: 1, SC: 1}) for uid in studies)


def listener_kills(work: Path, model_dir: Path, studies: int, kills: int) -> None:
    from pynetdicom import _config

    rig = make_rig(work / "listener", model_dir, quiet_period_s=2.0)
    port = rig.settings.listen_port
    extra = {"listen_host": "127.0.0.1", "series_settle_s": "1", "assembler_poll_s": "0.2",
             "disk_reserve_mb": "0", "fsync": "true"}
    sources = {}
    for i in range(studies):
        files = hospital_study(work / "listener" / "in" / f"s{i}", seed=300 + i)
        sources[str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)] = files
    acknowledged: set[str] = set()
    complete: list[bool] = []
    _config.STORE_SEND_CHUNKED_DATASET = True  # the files' bytes as they are
    try:
        rig.start("listen", "listen", **extra)
        wait_for_listener(port)
        stop_at = time.monotonic() + 600

        def sender() -> None:
            complete.extend(send_until_complete(port, files, acknowledged, stop_at) for files in sources.values())

        thread = threading.Thread(target=sender)
        thread.start()
        done_kills = 0
        rng = random.Random(0)
        while thread.is_alive() and done_kills < kills:
            time.sleep(rng.uniform(0.1, 0.6))
            if not thread.is_alive():
                break
            rig.kill("listen")
            done_kills += 1
            rig.start("listen", "listen", **extra)
            wait_for_listener(port)
        thread.join()
        store = rig.store()

        def all_queued():
            records = [store.get(uid) for uid in sources]
            return all(r is not None and r.state == StudyState.QUEUED and r.instances == len(sources[r.study_uid])
                       for r in records) and records

        records = wait_until(all_queued, 60) or [store.get(uid) for uid in sources]
        spool = rig.settings.spool_dir
        on_disk = {}
        for path in spool.rglob("*.dcm"):
            try:
                on_disk[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
            except Exception:
                pass
        lost = len(acknowledged - set(on_disk))
        jobs = Counter(fields[b"job_id"].decode()
                       for _, fields in redis.Redis(port=rig.redis.port).xrange(f"{rig.settings.stream_prefix}:jobs"))
        once = sum(1 for r in records if r is not None and r.job_id and jobs[r.job_id] == 1)
        partial = sum(jobs.values()) - once
        empty = sum(1 for p in spool.rglob("*.dcm") if p.stat().st_size == 0)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        rig.close()
    total = sum(len(f) for f in sources.values())
    print(f"listener SIGKILL x{done_kills} while {studies} studies ({total} instances) were sent: "
          f"{lost} of {len(acknowledged)} acknowledged instances lost; {once} of {studies} studies queued with "
          f"their complete content exactly once; {partial} other queue entries (partial content queued when a "
          f"study fell quiet during a restart); {empty} empty instance files in the spool; "
          f"{sum(complete)} of {studies} sends completed")


def worker_kills(work: Path, model_dir: Path, studies: int, kills: int) -> None:
    rig = make_rig(work / "worker", model_dir, visibility_timeout_s=3.0, max_attempts=kills + 2)
    client = redis.Redis(port=rig.redis.port)
    store = rig.store()
    uids = []
    for i in range(studies):
        spooled = spool_files(rig.settings.spool_dir, write_study(work / "worker" / "in" / f"s{i}", seed=400 + i,
                                                                  shape=(15, 64, 64), upsample=4))
        enqueue(rig.settings, spooled, client)
        uids.append(spooled.study_uid)
    done_kills = 0
    try:
        rig.start("worker", "worker", "--name", "w0")
        rng = random.Random(1)
        started = time.time()

        def claimed_by_this_worker() -> bool:  # not a study still marked by the worker killed before
            return any((r := store.get(u)).state == StudyState.PROCESSING
                       and r.state_times.get("processing", 0.0) > started for u in uids)

        while done_kills < kills:
            if not wait_until(claimed_by_this_worker, 60, 0.005):
                break
            time.sleep(rng.uniform(0.0, 0.3))
            rig.kill("worker")
            done_kills += 1
            started = time.time()
            rig.start("worker", "worker", "--name", f"w{done_kills}")
        finished = wait_until(lambda: all(store.get(u).state in (StudyState.DONE, StudyState.FAILED) for u in uids),
                              300)
        wait_until(lambda: sum(sum(c.values()) for c in delivered_per_study(rig.pacs).values()) >= 3 * studies, 60)
        time.sleep(3)  # a duplicate delivery would arrive now
        counts = delivered_per_study(rig.pacs)
        records = [store.get(u) for u in uids]
    finally:
        rig.close()
    states = Counter(r.state.value for r in records)
    attempts = Counter(r.attempts for r in records)
    print(f"worker SIGKILL x{done_kills} mid-job over {studies} studies: states {dict(states)}"
          f"{'' if finished else ' (timed out)'}; attempts per study {dict(sorted(attempts.items()))}; "
          f"{exactly_once(counts, uids)} of {studies} delivered exactly once (one SEG, one SR, one preview)")


def redis_loss(work: Path, model_dir: Path, studies: int) -> None:
    rig = make_rig(work / "redis", model_dir, persistent=False, quiet_period_s=1.0)
    port = rig.settings.listen_port
    extra = {"listen_host": "127.0.0.1", "series_settle_s": "0.5", "assembler_poll_s": "0.2",
             "disk_reserve_mb": "0", "recover_interval_s": "2"}
    sources = [hospital_study(work / "redis" / "in" / f"s{i}", seed=500 + i) for i in range(studies)]
    uids = [str(pydicom.dcmread(f[0], stop_before_pixels=True).StudyInstanceUID) for f in sources]
    try:
        rig.start("listen", "listen", **extra)
        wait_for_listener(port)
        acknowledged: set[str] = set()
        for files in sources:
            send_until_complete(port, files, acknowledged, time.monotonic() + 120)
        store = rig.store()
        rig.start("worker", "worker", "--name", "w0")
        done_before = wait_until(lambda: sum(1 for u in uids if (r := store.get(u)) and r.state == StudyState.DONE)
                                 >= max(1, studies // 3) and
                                 sum(1 for u in uids if (r := store.get(u)) and r.state == StudyState.DONE), 120, 0.01)
        rig.redis.kill()  # no persistence: jobs, records and pending deliveries are gone
        rig.redis.start()
        lost_at_kill = sum(1 for u in uids if store.get(u) is None)
        wait_until(lambda: sum(sum(c.values()) for c in delivered_per_study(rig.pacs).values()) >= 3 * studies, 180)
        time.sleep(3)
        counts = delivered_per_study(rig.pacs)
        states = Counter(r.state.value if (r := store.get(u)) else "unknown" for u in uids)
    finally:
        rig.close()
    print(f"Redis (no persistence) SIGKILL with {studies - (done_before or 0)} of {studies} studies not yet done: "
          f"{lost_at_kill} study records gone; afterwards states {dict(states)}; "
          f"{exactly_once(counts, uids)} of {studies} delivered exactly once")


def hostile_inputs(work: Path, model_dir: Path) -> None:
    import requests
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

    rig = make_rig(work / "hostile", model_dir)
    port, api_port, key = rig.settings.listen_port, free_port(), "bench-key-0123456789abcdef"
    extra = {"listen_host": "127.0.0.1", "disk_reserve_mb": "0", "max_instance_mb": "1", "max_upload_mb": "64",
             "api_keys": f'["{key}"]'}
    good = hospital_study(work / "hostile" / "in", seed=600)[0]
    rows: list[tuple[str, str, str]] = []
    try:
        rig.start("listen", "listen", **extra)
        rig.start("api", "api", "--host", "127.0.0.1", "--port", str(api_port), **extra)
        wait_for_listener(port)

        def variant(change) -> Dataset:
            ds = pydicom.dcmread(good)
            ds.SOPInstanceUID = pydicom.uid.generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            change(ds)
            return ds

        def short_pixels(ds):
            ds.Rows = ds.Columns = 65535
            ds.PixelData = bytes(100)

        def oversize(ds):
            ds.NumberOfFrames = 40
            ds.PixelData = bytes(ds.Rows * ds.Columns * 2 * 40)

        def hostile_uid(ds):
            ds.StudyInstanceUID = "1.2.3\x1b[31m\r\n" + "9" * 300

        def traversal_uid(ds):
            ds.SeriesInstanceUID = "../../../etc"

        def no_study_uid(ds):
            del ds.StudyInstanceUID

        def long_name(ds):
            ds.PatientName = "FAULTBENCH^SECRET" + "\x1b[2J" * 10

        ae = AE(ae_title="PACS")
        ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
        for name, change, expected in (
            ("pixel data shorter than its header (65535 x 65535, 100 bytes)", short_pixels, "0xC210"),
            ("instance over the size cap (5 MB, cap 1 MB)", oversize, "0xC210"),
            ("Study Instance UID with control characters, 300 digits", hostile_uid, "0xC210"),
            ("Series Instance UID '../../../etc'", traversal_uid, "0xC210"),
            ("no Study Instance UID", no_study_uid, "0xC210"),
            ("patient name with terminal escapes", long_name, "0x0000"),
        ):
            assoc = ae.associate("127.0.0.1", port, ae_title="LUMBAR_AI")
            status = assoc.send_c_store(variant(change))
            got = f"0x{status.Status:04X}" if "Status" in status else "no status"
            assoc.release()
            rows.append(("C-STORE", name, f"{got} (expected {expected})"))

        wait_until(lambda: _answers(api_port), 60, 0.2)
        auth = {"Authorization": f"Bearer {key}"}
        url = f"http://127.0.0.1:{api_port}/studies"
        bomb = io.BytesIO()
        with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
            with archive.open("bomb.dcm", "w", force_zip64=True) as member:
                for _ in range(256):
                    member.write(bytes(1 << 20))
        escape = io.BytesIO()
        with zipfile.ZipFile(escape, "w") as archive:
            archive.writestr("../../escape.dcm", good.read_bytes())
        buffer = io.BytesIO()
        variant(short_pixels).save_as(buffer)
        for name, files, headers, expected in (
            ("no API key", [("files", ("a.dcm", good.read_bytes()))], {}, 401),
            ("wrong API key", [("files", ("a.dcm", good.read_bytes()))], {"Authorization": "Bearer nope"}, 403),
            ("a text file", [("files", ("notes.txt", b"not DICOM at all"))], auth, 415),
            ("a DICOM file cut after 300 bytes", [("files", ("cut.dcm", good.read_bytes()[:300]))], auth, 400),
            ("pixel data shorter than its header", [("files", ("short.dcm", buffer.getvalue()))], auth, 400),
            ("zip bomb (one member, 256 MB expanded; limit 64 MB)", [("files", ("bomb.zip", bomb.getvalue()))], auth, 413),
            ("zip member named ../../escape.dcm", [("files", ("escape.zip", escape.getvalue()))], auth, 202),
        ):
            response = requests.post(url, files=files, headers=headers, timeout=120)
            reasons = "; ".join(r["reason"] for r in response.json().get("rejected", [])) if response.content else ""
            rows.append(("POST /studies", name, f"{response.status_code} (expected {expected}) {reasons[:70]}"))
        escaped = [p for p in (work / "hostile").rglob("escape.dcm")]
        rows.append(("POST /studies", "files written outside the spool by the ../ member", str(len(escaped))))
    finally:
        rig.close()
    print("hostile inputs:")
    for channel, name, status in rows:
        print(f"  {channel:14s} {name:62s} {status}")


def _answers(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def patient_data_in_logs() -> None:
    values = [v.lower() for v in PATIENT.values()] + ["faultbench", "secret"]
    lines = hits = 0
    for log in dict.fromkeys(LOGS):
        if log.exists():
            for line in log.read_text(errors="replace").splitlines():
                lines += 1
                if any(v in line.lower() for v in values):
                    hits += 1
                    print(f"  {log.name}: {line[:160]!r}")  # the bench's own made-up patient: safe to show
    print(f"patient name, ID and birth date in the logs: {hits} of {lines} lines "
          f"({len(set(LOGS))} process logs)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--kills", type=int, default=4)
    parser.add_argument("--memory", choices=("full", "quick", "off"), default="full")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        work = Path(tmp)
        model_dir = TINY_BANDS_MODEL  # the service tests' committed spine-bands model
        listener_kills(work, model_dir, args.studies, args.kills)
        worker_kills(work, model_dir, args.studies, args.kills)
        redis_loss(work, model_dir, args.studies)
        hostile_inputs(work, model_dir)
        patient_data_in_logs()
        if args.memory != "off":
            from bench_memory import bench_api, bench_listener

            quick = args.memory == "quick"
            (work / "memory").mkdir()
            bench_listener(work / "memory", 4 if quick else 16, 50 if quick else 200)
            bench_api(work / "memory", 256 if quick else 1024, 300 if quick else 1900)
    print(f"all scenarios in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
