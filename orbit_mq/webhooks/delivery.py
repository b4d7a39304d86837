"""What jobs' and task batches' webhooks share: the signature, the headers, and the shape of a
store's side of delivering (`Outbox`), so that one sender loop and one retry policy serve both.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Protocol

from orbit_mq.errors import TransientError

SIGNATURE_HEADER = "x-hub-signature-256"
DELIVERY_HEADER = "x-orbit-delivery"


def signature(secret: str, body: bytes) -> str:
    """The `x-hub-signature-256` value of `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class DeliveryFailed(TransientError):
    """A POST that did not get a 2xx answer."""


@dataclass(frozen=True)
class Target:
    """Where a webhook with deliveries to make sends them, and how far it got."""

    key: str  # a job's id or a batch's: the first half of x-orbit-delivery
    url: str
    secret: str
    give_up_at: float  # time.time() after which a failing POST is not tried again
    delivered: int  # the `n` of the last delivery a receiver acknowledged (0: none)


@dataclass(frozen=True)
class Delivery:
    """One POST, fixed once made so that a repeat is the same: `{key}:{n}` names it."""

    n: int  # a job's seq, a batch's group number: 1, 2, 3 …
    body: bytes
    final: bool  # the webhook's last: once delivered, it is done


class Outbox(Protocol):
    """The store's side of one kind of webhook (jobs, task batches), for the sender."""

    def pending(self) -> list[str]:
        """The keys of the webhooks that may still have deliveries to make."""
        ...

    def target(self, key: str) -> Target | None:
        """Webhook `key`, while it is pending."""
        ...

    def delivery(self, key: str, n: int) -> Delivery | None:
        """Its `n`th delivery, once what it carries has arrived."""
        ...

    def attempted(self, key: str, error: str | None) -> None: ...

    def delivered(self, key: str, delivery: Delivery) -> None: ...

    def failed(self, key: str, error: str) -> None: ...
