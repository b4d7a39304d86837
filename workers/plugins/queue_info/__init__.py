"""The queue_info plugin on the endpoint; its contract (models, states, errors, methods) is
`orbit_mq.contracts.queue_info`."""

from orbit_mq.workers.plugins.queue_info.base import QueueInfoSettings
from orbit_mq.workers.plugins.queue_info.plugin import QueueInfo

__all__ = ["QueueInfo", "QueueInfoSettings"]
