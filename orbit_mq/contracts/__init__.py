"""The contracts of the plugins shipped with orbit_mq: each plugin's models, states, errors and
method signatures, importing no endpoint runtime. The SDK types calls and results with them:

    psij = await fabric.endpoint("hpc1").plugin(PsiJ)     # a PsiJ: typed methods and results
"""

from importlib.metadata import entry_points

from orbit_mq.contract import Contract
from orbit_mq.contracts.psij import PsiJ
from orbit_mq.contracts.queue_info import QueueInfo
from orbit_mq.contracts.staging import Staging
from orbit_mq.contracts.sysinfo import SysInfo
from orbit_mq.contracts.tasks import Tasks

GROUP = "orbit_mq.contracts"  # entry points: plugin name -> its contract class


def installed_contracts() -> list[type[Contract]]:
    """The contracts of every installed plugin package, by name (`orbit-mq schemas`).

    A third-party package declares its own next to its plugin:

        [project.entry-points."orbit_mq.contracts"]
        mytool = "mypackage.contract:MyTool"
    """
    found = [entry.load() for entry in entry_points(group=GROUP)]
    return sorted((c for c in found if issubclass(c, Contract)), key=lambda c: c.name)


__all__ = ["PsiJ", "QueueInfo", "Staging", "SysInfo", "Tasks", "installed_contracts"]
