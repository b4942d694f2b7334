"""Jobs whose message went missing, and jobs Pub/Sub gave up on.

`reconcile` republishes jobs that stayed PENDING past a threshold (the publish after the Redis
write was lost: a crash between the two, a timeout that hid a failure) and fails them after a
few tries. `record_dead_letter` turns a dead-lettered message into FAILURE with the reason.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from nimbus.errors import ServiceUnavailable

if TYPE_CHECKING:
    from nimbus.bus import JobBus
    from nimbus.jobs import JobStore

logger = logging.getLogger(__name__)

MAX_REPUBLISH = 3


def reconcile(store: JobStore, bus: JobBus, *, older_than: float) -> tuple[int, int]:
    """Republish (or, after MAX_REPUBLISH tries, fail) jobs PENDING for over `older_than` s.

    Returns (republished, failed). A duplicate message is harmless: the claim decides.
    """
    republished = failed = 0
    for job_id in store.pending_before(older_than):
        tries = store.requeued(job_id)
        if tries > MAX_REPUBLISH:
            if store.fail(
                job_id,
                epoch=None,
                error={
                    "code": "queue_lost",
                    "message": f"No worker took the job after {MAX_REPUBLISH} republishes; "
                    "submit it again.",
                },
            ):
                failed += 1
                logger.error("! job %s failed: queue lost", job_id, extra={"job_id": job_id})
            continue
        try:
            bus.publish_job(job_id, reconciled=str(tries))
        except ServiceUnavailable as error:
            logger.warning("job %s not republished: %s", job_id, error.message)
            continue
        republished += 1
        logger.warning(
            "↻ job %s pending too long; republished (%d)", job_id, tries, extra={"job_id": job_id}
        )
    return republished, failed


def record_dead_letter(store: JobStore, job_id: str, *, delivery_attempts: int | None) -> bool:
    """FAILURE for a job Pub/Sub dead-lettered, with its last attempt's error; True if changed."""
    job = store.fetch(job_id, with_result=False)
    if job is None:
        logger.error("dead-lettered job %s is unknown", job_id, extra={"job_id": job_id})
        return False
    last = (job.last_error or {}).get("message", "no error was recorded")
    attempts = delivery_attempts or job.attempts
    changed = store.fail(
        job_id,
        epoch=None,
        error={
            "code": "dead_lettered",
            "message": f"Processing failed {attempts} times; the last error: {last}",
        },
    )
    if changed:
        logger.error(
            "! job %s failed: dead-lettered after %s attempts",
            job_id,
            attempts,
            extra={"job_id": job_id},
        )
    return changed
