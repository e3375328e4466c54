"""Host collectors: the Agent's default system checks (cpu, load, memory, uptime, file_handle, disk, io, network)
as AgentChecks, so they run, schedule, and can be tuned in conf.d/<name>.yaml like any check."""

from __future__ import annotations

from .disk import DiskCheck, IoCheck
from .network import NetworkCheck
from .postgres import PostgresCheck
from .system import CpuCheck, FileHandleCheck, LoadCheck, MemoryCheck, UptimeCheck

DEFAULT: dict[str, type] = {
    "cpu": CpuCheck,
    "load": LoadCheck,
    "memory": MemoryCheck,
    "uptime": UptimeCheck,
    "file_handle": FileHandleCheck,
    "disk": DiskCheck,
    "io": IoCheck,
    "network": NetworkCheck,
}
# Built-in integrations: used for conf.d/<name>.yaml when no checks.d/<name>.py stands in for them.
INTEGRATIONS: dict[str, type] = {"postgres": PostgresCheck}
