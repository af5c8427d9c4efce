"""Callbacks the API itself sends (jobs canceled while queued, cache hits): on ``ETM_API_CALLBACK_THREADS`` threads
of their own, never on the request threads, so receivers that answer slowly cannot starve the API.

Each delivery is ``jobs.webhooks.deliver`` (signed, retried, allowed hosts only; every attempt has the total
deadline ETM_CALLBACK_TIMEOUT). At most ``MAX_PENDING`` callbacks wait for a thread; past that a callback is not
sent and the job's ``callback`` says so. The threads are daemons: callbacks still waiting when the API process
stops are not sent.
"""

from __future__ import annotations

import logging
import queue
import threading

from etm.settings import Settings
from jobs.job_store import JobStore
from jobs.records import CallbackOutcome
from jobs.webhooks import deliver

log = logging.getLogger("etm.webhooks")
MAX_PENDING = 1000


class CallbackSender:
    def __init__(self, settings: Settings, jobs: JobStore) -> None:
        self.settings, self.jobs = settings, jobs
        self._queue: queue.Queue[str] = queue.Queue(maxsize=MAX_PENDING)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def submit(self, job_id: str) -> bool:
        """Queue the callback of job ``job_id`` (returns at once); False when too many are pending."""
        self._start()
        try:
            self._queue.put_nowait(job_id)
        except queue.Full:
            log.warning("job %s: callback not sent, %d callbacks are already waiting", job_id, MAX_PENDING)
            outcome = CallbackOutcome(
                attempts=0,
                error=f"not sent: {MAX_PENDING} callbacks were already waiting in this API process "
                "(ETM_API_CALLBACK_THREADS sends them)",
            )
            self.jobs.set_fields(job_id, callback=outcome)
            return False
        return True

    def _start(self) -> None:
        with self._lock:
            while len(self._threads) < self.settings.api_callback_threads:
                t = threading.Thread(target=self._run, name=f"etm-callback-{len(self._threads)}", daemon=True)
                t.start()
                self._threads.append(t)

    def _run(self) -> None:
        while True:
            job_id = self._queue.get()
            try:
                job = self.jobs.get(job_id)
                if job is not None and job.callback_url:
                    deliver(self.settings, self.jobs, job)
            except Exception:  # noqa: BLE001 - one failed delivery must not stop the thread
                log.exception("job %s: callback failed", job_id)
            finally:
                self._queue.task_done()
