"""The embedded local stack: PostgreSQL and Apache Kafka processes without Docker.

`up(StackSettings())` is idempotent and waits until both answer; it returns `StackEndpoints`
(database URLs per role, Kafka bootstrap servers). `down()` stops both and leaves no process.
"""

from ledgerflow.stack.kafka_broker import ensure_kafka_jars
from ledgerflow.stack.lifecycle import (
    SERVICES,
    Service,
    ServiceChange,
    ServiceStatus,
    StackEndpoints,
    down,
    down_async,
    endpoints,
    env_lines,
    env_vars,
    mask_url,
    start_services,
    status,
    status_async,
    stop_services,
    up,
    up_async,
)
from ledgerflow.stack.process import StackError
from ledgerflow.stack.settings import StackSettings

__all__ = [
    "SERVICES",
    "Service",
    "ServiceChange",
    "ServiceStatus",
    "StackEndpoints",
    "StackError",
    "StackSettings",
    "down",
    "down_async",
    "endpoints",
    "ensure_kafka_jars",
    "env_lines",
    "env_vars",
    "mask_url",
    "start_services",
    "status",
    "status_async",
    "stop_services",
    "up",
    "up_async",
]
