"""Jobs whose message went missing, and jobs Pub/Sub gave up on.

`reconcile` publishes again the message of two kinds of job: one PENDING past a threshold (the
publish after the Redis write was lost, a crash between the two, or merely a long queue), and
one whose worker's lease ran out (the worker died or stalled, and its message may be gone: a
copy that met the live lease was acked). A duplicate message is harmless, the claim decides,
so the reconciler never gives up on a job while Pub/Sub could still deliver it: it republishes
with a growing interval, and fails a job only once it waited longer than the subscription
keeps messages. `record_dead_letter` turns a dead-lettered message into FAILURE with the
reason, unless a live worker holds the job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from nimbus.bus import RETAIN_ACKED_SECONDS
from nimbus.errors import ServiceUnavailable
from nimbus.jobs import JobStatus
from vm_worker.events import JobLog

if TYPE_CHECKING:
    from nimbus.bus import JobBus
    from nimbus.jobs import JobStore

logger = logging.getLogger(__name__)


def reconcile(
    store: JobStore,
    bus: JobBus,
    *,
    older_than: float,
    give_up_after: float = RETAIN_ACKED_SECONDS,
) -> tuple[int, int]:
    """Republish jobs PENDING for over `older_than` s and jobs whose lease ran out; fail those
    PENDING longer than `give_up_after` (the subscription's message retention).

    Returns (republished, failed): only publishes Pub/Sub accepted count. A pass stops at the
    first publish that fails (Pub/Sub is down: the next pass tries again).
    """
    republished = failed = 0
    for job_id in store.pending_before(older_than):
        job = store.fetch(job_id, with_result=False)
        if job is None or job.status is not JobStatus.PENDING:
            store.requeued(job_id)  # claimed or gone meanwhile: this takes it out of the index
            continue
        if time.time() - job.created_at > give_up_after:
            if store.fail(
                job_id,
                epoch=None,
                unless_leased=True,
                error={
                    "code": "queue_lost",
                    "message": f"No worker took the job in {give_up_after / 3600:g} hours; "
                    "submit it again.",
                },
            ):
                failed += 1
                JobLog(job_id, logger=logger).event(
                    logging.ERROR, "failed", "! job %s failed: queue lost", job_id
                )
            continue
        # The next republish of this job waits twice as long as this one did.
        done = _republish(bus, job_id, "pending", store.requeued, older_than)
        if done is None:
            return republished, failed
        republished += done
    for job_id in store.lapsed_leases():
        done = _republish(bus, job_id, "lease_lapsed", store.lapsed_requeued, older_than)
        if done is None:
            return republished, failed
        republished += done
    return republished, failed


_REPUBLISHED = {
    "pending": "↻ job %s pending for long; published again (%d)",
    "lease_lapsed": "↻ job %s lease ran out; published again (%d)",
}


def _republish(
    bus: JobBus, job_id: str, reason: str, requeue: Callable[..., int], backoff: float
) -> int | None:
    """Publish the job again, then `requeue(job_id, backoff=...)` records it (its count of
    tries; 0 if the job moved on meanwhile): 1 if it was, 0 if not, None if Pub/Sub refused
    (the pass stops; the next one tries again)."""
    try:
        bus.publish_job(job_id, reconciled=reason)
    except ServiceUnavailable as error:
        logger.warning("job %s not republished: %s", job_id, error.message)
        return None
    tries = requeue(job_id, backoff=backoff)
    if not tries:
        return 0
    JobLog(job_id, logger=logger).event(
        logging.WARNING, "republished", _REPUBLISHED[reason], job_id, tries
    )
    return 1


def record_dead_letter(
    store: JobStore,
    job_id: str,
    *,
    delivery_attempts: int | None,
    live_workers: set[str] | None = None,
    log: JobLog | None = None,
) -> bool:
    """FAILURE for a job Pub/Sub dead-lettered, with its last attempt's error; True if changed.

    A job a worker holds under a live lease is left alone (its outcome is that worker's, or the
    reconciler's once the lease runs out), as is one STARTED by a worker in `live_workers`.
    """
    job = store.fetch(job_id, with_result=False)
    if job is None:
        logger.error("dead-lettered job %s is unknown", job_id, extra={"job_id": job_id})
        return False
    if job.status is JobStatus.STARTED and job.owner in (live_workers or set()):
        logger.warning(
            "dead-lettered job %s left to its live worker %s",
            job_id,
            job.owner,
            extra={"job_id": job_id},
        )
        return False
    last = (job.last_error or {}).get("message", "no error was recorded")
    attempts = delivery_attempts or job.attempts
    changed = store.fail(
        job_id,
        epoch=None,
        unless_leased=True,
        error={
            "code": "dead_lettered",
            "message": f"Processing failed {attempts} times; the last error: {last}",
        },
    )
    if changed:
        (log or JobLog(job_id, logger=logger)).event(
            logging.ERROR,
            "dead_lettered",
            "! job %s failed: dead-lettered after %s attempts",
            job_id,
            attempts,
        )
    elif not job.is_terminal:
        logger.warning(
            "dead-lettered job %s left alone: a worker holds it", job_id, extra={"job_id": job_id}
        )
    return changed
