"""Signed webhooks: every state change of a job, and of the tasks of a task batch, POSTed by
the gateway to the URL registered for it, in order, signed as GitHub and psik sign them.

A job's transitions go one per POST:

    POST {url}
    content-type: application/json
    x-hub-signature-256: sha256=HMAC-SHA256(secret, body)
    x-orbit-delivery: {job_id}:{seq}      (the same on a repeat: receivers drop repeats by it)

    {"endpoint": "hpc1", "owner": "alice", "job_id": "…", "seq": 3, "state": …, …}

A task batch's (the tasks of one submission) in groups, those that arrived together in one
POST (`batches`), with the batch's counts by state and, in its last, `done`:

    x-orbit-delivery: {batch}:{n}

    {"endpoint": …, "owner": …, "batch": "…", "n": 2, "transitions": [TaskStatus, …],
     "counts": {"RUNNING": 10, "DONE": 40}, "tasks": 50, "done": false}

Nothing is lost while this process or the receiver is down: events wait in one durable
subscription queue (both kinds: one reader, one set of broker rights); each transition is
written to the store (SQLite) before its event is acked, and a webhook's deliveries are
POSTed strictly in order, each until a 2xx comes back (back-off up to `retry.MAX_PAUSE`), or
until the webhook's `give_up_after` has passed (then the failure is recorded and its later
deliveries are not sent). A job's events that arrive before its registration (a submit's
events can come before its answer) are kept a while, so the registration finds them; a task
batch is registered before its tasks are submitted. The secret is stored (the file is
readable by its owner only), never logged or shown.

The subscription reads every user's events (the process's broker user needs all events:
`orbit-mq admin user add NAME --all-events`); only registered webhooks are delivered.
"""

from orbit_mq.webhooks.batches import BatchWebhookInfo
from orbit_mq.webhooks.deliver import PATTERNS, SUBSCRIPTION, UNCLAIMED_FOR, Webhooks
from orbit_mq.webhooks.delivery import DELIVERY_HEADER, SIGNATURE_HEADER, DeliveryFailed, signature
from orbit_mq.webhooks.store import WebhookInfo, WebhookStore

__all__ = [
    "DELIVERY_HEADER",
    "PATTERNS",
    "SIGNATURE_HEADER",
    "SUBSCRIPTION",
    "UNCLAIMED_FOR",
    "BatchWebhookInfo",
    "DeliveryFailed",
    "WebhookInfo",
    "WebhookStore",
    "Webhooks",
    "signature",
]
