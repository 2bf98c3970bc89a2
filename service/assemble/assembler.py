"""Study assembly: watch the spool, decide when a study is complete, select its series, enqueue its job.

Runs as a background thread of ``lumbar-ai listen``. It reads only the filesystem to decide (the spool's
per-study ``.received`` marker and directory listings), so studies keep arriving while Redis is down, and
it reaches Redis only to record state and enqueue. A study is assembled when

* its quiet period has passed since the last instance (settings.quiet_period_s), or
* earlier, when its sagittal T1 and T2 are both present and neither has grown for settings.series_settle_s.

After assembling, the spool's ``.assembled`` file holds the digest of the study's content; a study whose
content differs from it (new instances, or a restart before the job was enqueued) is assembled again, which
is the start-up reconciliation: no complete study is ever left unqueued. Job ids make that repetition safe.

Redis can lose its data (no persistence, a lost volume, a failover) while the spool and results on disk
keep theirs. :meth:`Assembler.recover` runs at start-up and every ``recover_interval_s``: an assembled study
that Redis has no record of is rebuilt from disk. With results of its current content on disk it is done
again, and each destination without a delivery marker (results.delivered_marker) gets its delivery back;
without, it is assembled and queued again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from service.assemble.headers import InstanceHeader, read_header
from service.assemble.rules import SeriesRules
from service.assemble.selection import Selection, select_series
from service.deliver.outbox import Outbox
from service.deliver.scu import describe
from service.encode.results import DICOM_KINDS, FILE_NAMES, results_job_id, study_results_dir, was_delivered
from service.errors import QueueError, StudyNotFoundError
from service.queue.jobs import Job, make_job_id
from service.queue.state import StudyRecord, StudyState, StudyStore
from service.queue.stream import JobQueue
from service.receive.spool import Spool, SpooledFile, digest_instances

LOG = logging.getLogger(__name__)


@dataclass
class _Tracked:
    """What the assembler remembers about one study between polls (in memory only)."""

    settled_mtime: float | None = None
    headers: dict[str, tuple[int, InstanceHeader]] = field(default_factory=dict)
    series_counts: dict[str, int] = field(default_factory=dict)
    series_changed_at: dict[str, float] = field(default_factory=dict)
    recorded_instances: int = -1


class Assembler:
    def __init__(
        self,
        spool: Spool,
        store: StudyStore,
        queue: JobQueue,
        rules: SeriesRules,
        quiet_period_s: float,
        settle_s: float,
        clock: Callable[[], float] = time.time,
        retention_s: float | None = None,
        sweep_interval_s: float = 3600.0,
        results_dir: Path | None = None,
        outbox: Outbox | None = None,
        recover_interval_s: float = 60.0,
    ) -> None:
        self.spool = spool
        self.store = store
        self.queue = queue
        self.rules = rules
        self.quiet_period_s = quiet_period_s
        self.settle_s = min(settle_s, quiet_period_s)
        self.clock = clock
        self.retention_s = retention_s
        self.sweep_interval_s = sweep_interval_s
        self.results_dir = results_dir
        self.outbox = outbox
        self.recover_interval_s = recover_interval_s
        self._tracked: dict[str, _Tracked] = {}
        self._lock = threading.Lock()
        self._redis_down = False

    # -- the background loop -------------------------------------------------------------------------------

    def run(self, stop: threading.Event, interval_s: float = 0.5) -> None:
        """Reconcile the spool, then poll until stop is set."""
        LOG.info("assembler: reconciling %d studies in the spool", len(self.spool.studies()))
        self.poll()
        next_sweep = next_recovery = time.monotonic()
        while not stop.wait(interval_s):
            self.poll()
            if time.monotonic() >= next_recovery:
                next_recovery = time.monotonic() + self.recover_interval_s
                try:
                    recovered = self.recover()
                except QueueError:
                    recovered = []  # Redis down: poll says so; try again at the next interval
                except Exception:
                    LOG.exception("assembler: reconciliation with Redis failed")
                    recovered = []
                if recovered:
                    LOG.warning("assembler: Redis had no record of %d assembled studies; rebuilt them from disk",
                                len(recovered))
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + self.sweep_interval_s
                try:
                    removed = self.sweep()
                except Exception:
                    LOG.exception("assembler: spool retention sweep failed")
                    continue
                if removed:
                    LOG.info("assembler: removed %d spooled studies past their retention", len(removed))

    def start(self, stop: threading.Event, interval_s: float = 0.5) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop, interval_s), name="assembler", daemon=True)
        thread.start()
        return thread

    def poll(self) -> list[StudyRecord]:
        """One pass over the spool; the records of the studies assembled in it."""
        done: list[StudyRecord] = []
        with self._lock:
            present = set()
            for study_uid in self.spool.studies():
                present.add(study_uid)
                mtime = self.spool.last_received(study_uid)
                tracked = self._tracked.setdefault(study_uid, _Tracked())
                if mtime is None or tracked.settled_mtime == mtime:
                    continue
                try:
                    record = self._check(study_uid, tracked, mtime)
                except StudyNotFoundError:
                    LOG.warning("assembler: study %s was deleted while being assembled", study_uid)
                    continue
                except QueueError as exc:
                    if not self._redis_down:
                        LOG.warning("assembler: Redis unavailable, will enqueue when it is back (%s)", exc)
                    self._redis_down = True
                    break  # every other study would fail the same way; retry on the next poll
                except Exception:
                    LOG.exception(
                        "assembler: study %s could not be assembled; retried when it changes", study_uid
                    )
                    tracked.settled_mtime = mtime
                    continue
                if self._redis_down:
                    LOG.info("assembler: Redis is back")
                    self._redis_down = False
                if record is not None:
                    done.append(record)
            for gone in set(self._tracked) - present:
                del self._tracked[gone]
        return done

    def _check(self, study_uid: str, tracked: _Tracked, mtime: float) -> StudyRecord | None:
        files = self.spool.instances(study_uid)
        digest = digest_instances((f.sop_uid, f.size) for f in files)
        if self.spool.read_assembled(study_uid) == digest:
            tracked.settled_mtime = mtime
            tracked.headers.clear()
            return None
        now = self.clock()
        if tracked.recorded_instances != len(files):
            self.store.ensure(study_uid, instances=len(files))
            tracked.recorded_instances = len(files)
        if now - mtime >= self.quiet_period_s:
            why = f"complete: no new instance for {self.quiet_period_s:g} s"
        else:
            selection = select_series(self._headers(tracked, files), self.rules)
            chosen = [s for s in (selection.t1, selection.t2) if s is not None]
            if len(chosen) < 2 or any(
                now - tracked.series_changed_at[s.series_uid] < self.settle_s for s in chosen
            ):
                return None
            why = f"complete: sagittal T1 and T2 present and unchanged for {self.settle_s:g} s"
        record = self._assemble(study_uid, files, digest, tracked, why)
        tracked.settled_mtime = mtime
        return record

    def sweep(self) -> list[str]:
        """Delete spooled studies older than the retention whose processing is over; their UIDs.

        Only a study whose content was assembled as it is and whose state is done or failed goes: nothing
        waiting, queued, in progress or of unknown state (Redis down) is ever removed. Temp files left by
        a crash go too.
        """
        self.spool.remove_stale_temp_files()
        if self.retention_s is None:
            return []
        removed = []
        now = self.clock()
        for study_uid in self.spool.studies():
            last = self.spool.last_received(study_uid)
            if last is None or now - last < self.retention_s:
                continue
            if self.spool.read_assembled(study_uid) != self.spool.content_digest(study_uid):
                continue
            try:
                record = self.store.get(study_uid)
            except QueueError:
                return removed
            if record is None or record.state not in (StudyState.DONE, StudyState.FAILED):
                continue
            with self._lock:
                self.spool.delete_study(study_uid)
                self._tracked.pop(study_uid, None)
            removed.append(study_uid)
        return removed

    # -- after Redis lost its data -------------------------------------------------------------------------

    def recover(self) -> list[StudyRecord]:
        """Rebuild the record, job or deliveries of every assembled study Redis has no record of."""
        out = []
        with self._lock:
            for study_uid in self.spool.studies():
                files = self.spool.instances(study_uid)
                digest = digest_instances((f.sop_uid, f.size) for f in files)
                if not files or self.spool.read_assembled(study_uid) != digest:
                    continue  # not assembled as it is: poll() assembles it
                if self.store.get(study_uid) is not None:
                    continue
                tracked = self._tracked.setdefault(study_uid, _Tracked())
                out.append(self._recover_one(study_uid, files, digest, tracked))
        return out

    def _recover_one(self, study_uid: str, files: list[SpooledFile], digest: str, tracked: _Tracked
                     ) -> StudyRecord:
        selection = select_series(self._headers(tracked, files), self.rules)
        job_id = make_job_id(study_uid, selection.selected_instances)
        if selection.error or self.results_dir is None or results_job_id(self.results_dir, study_uid) != job_id:
            return self._assemble(study_uid, files, digest, tracked, "recovered: queued again after Redis lost it")
        folder = study_results_dir(self.results_dir, study_uid).resolve()
        self.queue.mark_done(job_id)
        self.store.ensure(study_uid, instances=len(files))
        record = self.store.transition(
            study_uid, StudyState.DONE, job_id=job_id, results_dir=str(folder),
            results={kind: str(folder / name) for kind, name in FILE_NAMES.items() if (folder / name).is_file()},
            **_record_fields(selection, "recovered: results found on disk after Redis lost the record"))
        if self.outbox is not None:
            pending = [d for d in self.outbox.settings.destinations
                       if not was_delivered(self.results_dir, study_uid, describe(d), job_id)]
            if pending:
                self.outbox.enqueue(study_uid, job_id, DICOM_KINDS, pending)
        tracked.headers.clear()
        LOG.info("study %s: record rebuilt from its results on disk (job %s)", study_uid, job_id)
        return record

    # -- assembling one study ------------------------------------------------------------------------------

    def assemble(self, study_uid: str, why: str = "complete: processing requested") -> StudyRecord:
        """Assemble a study now, whatever its quiet period (POST /studies/{uid}/process)."""
        with self._lock:
            files = self.spool.instances(study_uid)
            if not files:
                raise StudyNotFoundError(f"no instances of study {study_uid} in the spool")
            digest = digest_instances((f.sop_uid, f.size) for f in files)
            self.store.ensure(study_uid, instances=len(files))
            tracked = self._tracked.setdefault(study_uid, _Tracked())
            return self._assemble(study_uid, files, digest, tracked, why)

    def _assemble(
        self, study_uid: str, files: list[SpooledFile], digest: str, tracked: _Tracked, why: str
    ) -> StudyRecord:
        selection = select_series(self._headers(tracked, files), self.rules)
        fields = _record_fields(selection, why)
        self.store.ensure(study_uid)
        if selection.error:
            record = self.store.transition(study_uid, StudyState.FAILED, error=selection.error, **fields)
            LOG.info("study %s failed assembly: %s", study_uid, selection.error)
        else:
            job = Job(
                job_id=make_job_id(study_uid, selection.selected_instances),
                study_uid=study_uid,
                t2_series_uid=selection.t2.series_uid if selection.t2 else None,
                t1_series_uid=selection.t1.series_uid if selection.t1 else None,
            )
            if self.queue.enqueue(job):
                record = self.store.transition(
                    study_uid, StudyState.QUEUED, job_id=job.job_id, attempts=0, error=None, **fields
                )
                LOG.info("study %s queued as job %s (%d instances)", study_uid, job.job_id, len(files))
            else:
                record = self._already_known(study_uid, job, fields)
        self.spool.write_assembled(study_uid, digest)
        tracked.headers.clear()
        return record

    def _already_known(self, study_uid: str, job: Job, fields: dict) -> StudyRecord:
        """The same selected content was enqueued before: keep its state unless the record lost track."""
        current = self.store.get(study_uid)
        if current is not None and current.job_id == job.job_id and current.state != StudyState.RECEIVED:
            return self.store.update(study_uid, **fields)
        status = self.queue.job_status(job.job_id)
        if status == "done":
            return self.store.transition(study_uid, StudyState.DONE, job_id=job.job_id, **fields)
        if status == "dead":
            return self.store.transition(
                study_uid,
                StudyState.FAILED,
                job_id=job.job_id,
                error="this content failed before and was dead-lettered; POST /studies/{uid}/retry to try again",
                **fields,
            )
        return self.store.transition(study_uid, StudyState.QUEUED, job_id=job.job_id, **fields)

    def _headers(self, tracked: _Tracked, files: list[SpooledFile]) -> list[InstanceHeader]:
        """Headers of every instance, each file read once while the study is being watched."""
        now = self.clock()
        headers = []
        fresh: dict[str, tuple[int, InstanceHeader]] = {}
        for f in files:
            key = str(f.path)
            cached = tracked.headers.get(key)
            if cached is None or cached[0] != f.size:
                cached = (f.size, read_header(f.path, f.series_uid, f.sop_uid, f.size))
            fresh[key] = cached
            headers.append(cached[1])
        tracked.headers = fresh
        counts = Counter(h.series_uid for h in headers)
        for series_uid, count in counts.items():
            if tracked.series_counts.get(series_uid) != count:
                tracked.series_counts[series_uid] = count
                tracked.series_changed_at[series_uid] = now
        return headers


def _record_fields(selection: Selection, why: str) -> dict:
    return {
        "instances": selection.instances,
        "ignored_instances": selection.ignored_instances,
        "series": selection.series,
        "t1_series_uid": selection.t1.series_uid if selection.t1 else None,
        "t2_series_uid": selection.t2.series_uid if selection.t2 else None,
        "decisions": [why, *selection.decisions],
        "warnings": selection.warnings,
    }
