"""The psij plugin on the endpoint; its contract (models, states, errors, methods) is
`orbit_mq.contracts.psij`."""

from orbit_mq.workers.plugins.psij.plugin import PsiJ

__all__ = ["PsiJ"]
