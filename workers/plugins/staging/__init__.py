"""The staging plugin on the endpoint; its contract (models, errors, methods) is
`orbit_mq.contracts.staging`."""

from orbit_mq.workers.plugins.staging.plugin import Staging
from orbit_mq.workers.plugins.staging.settings import StagingSettings

__all__ = ["Staging", "StagingSettings"]
