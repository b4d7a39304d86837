"""orbit_mq: run and watch work on HPC machines through a RabbitMQ broker.

The public API is what `__all__` lists; everything else may change between releases.
"""

__version__ = "0.1.0"

from orbit_mq.client import EndpointHandle, Fabric, connect
from orbit_mq.config import Settings
from orbit_mq.contract import Contract
from orbit_mq.contracts import PsiJ, QueueInfo, Staging, SysInfo, Tasks
from orbit_mq.contracts.psij import (
    Job,
    JobSpec,
    JobState,
    JobStatus,
    JobStatusEvent,
    OutputChunk,
)
from orbit_mq.contracts.tasks import Task, TaskSpec, TaskState, TaskStatus
from orbit_mq.contracts.tasks.errors import TaskCanceled, TaskFailed
from orbit_mq.errors import (
    AccessRefused,
    AdminUnavailable,
    BrokerError,
    BrokerUnavailable,
    CallTimeout,
    ConfigError,
    Conflict,
    ConnectionLost,
    EndpointError,
    EndpointNotFound,
    EndpointOffline,
    InternalError,
    InvalidArguments,
    InvalidRequest,
    MethodNotFound,
    NotFound,
    OperationTimeout,
    OrbitError,
    PayloadTooLarge,
    PublishRefused,
    RemoteError,
    RequestTooLarge,
    SessionNotFound,
    TlsError,
    TransientError,
    Unauthorized,
    Unavailable,
)
from orbit_mq.protocol import (
    PROTOCOL_VERSION,
    EndpointInfo,
    ErrorCode,
    Event,
    HostRole,
    PluginInfo,
    SessionInfo,
)
from orbit_mq.proxy import PluginProxy, remote, with_options
from orbit_mq.staging import TransferResult, get_file, put_file
from orbit_mq.subscribe import Subscription
from orbit_mq.task_executor import TaskExecutor

__all__ = [
    "PROTOCOL_VERSION",
    "AccessRefused",
    "AdminUnavailable",
    "BrokerError",
    "BrokerUnavailable",
    "CallTimeout",
    "ConfigError",
    "Conflict",
    "ConnectionLost",
    "Contract",
    "EndpointError",
    "EndpointHandle",
    "EndpointInfo",
    "EndpointNotFound",
    "EndpointOffline",
    "ErrorCode",
    "Event",
    "Fabric",
    "HostRole",
    "InternalError",
    "InvalidArguments",
    "InvalidRequest",
    "Job",
    "JobSpec",
    "JobState",
    "JobStatus",
    "JobStatusEvent",
    "MethodNotFound",
    "NotFound",
    "OperationTimeout",
    "OrbitError",
    "OutputChunk",
    "PayloadTooLarge",
    "PluginInfo",
    "PluginProxy",
    "PsiJ",
    "PublishRefused",
    "QueueInfo",
    "RemoteError",
    "RequestTooLarge",
    "SessionInfo",
    "SessionNotFound",
    "Settings",
    "Staging",
    "Subscription",
    "SysInfo",
    "Task",
    "TaskCanceled",
    "TaskExecutor",
    "TaskFailed",
    "TaskSpec",
    "TaskState",
    "TaskStatus",
    "Tasks",
    "TlsError",
    "TransferResult",
    "TransientError",
    "Unauthorized",
    "Unavailable",
    "__version__",
    "connect",
    "get_file",
    "put_file",
    "remote",
    "with_options",
]
