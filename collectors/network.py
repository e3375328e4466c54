"""network: per-interface traffic rates, the Agent's names (errors include drops, as the Agent counts them)."""

from __future__ import annotations

import re
from typing import Any

import psutil

from relay.checks.base import AgentCheck


class NetworkCheck(AgentCheck):
    """Interfaces with traffic only; `lo` included like the Agent's default. Instance key excluded_interfaces
    (a list) and excluded_interface_re (a regex)."""

    def check(self, instance: dict[str, Any]) -> None:
        excluded = set(instance.get("excluded_interfaces") or [])
        pattern = re.compile(instance["excluded_interface_re"]) if instance.get("excluded_interface_re") else None
        for interface, counters in (psutil.net_io_counters(pernic=True) or {}).items():
            if interface in excluded or (pattern and pattern.match(interface)):
                continue
            if not counters.bytes_recv and not counters.bytes_sent:
                continue
            tags = [f"device:{interface}"]
            self.rate("system.net.bytes_rcvd", counters.bytes_recv, tags=tags)
            self.rate("system.net.bytes_sent", counters.bytes_sent, tags=tags)
            self.rate("system.net.packets_in.count", counters.packets_recv, tags=tags)
            self.rate("system.net.packets_out.count", counters.packets_sent, tags=tags)
            self.rate("system.net.packets_in.drop", counters.dropin, tags=tags)
            self.rate("system.net.packets_out.drop", counters.dropout, tags=tags)
            self.rate("system.net.packets_in.error", counters.errin + counters.dropin, tags=tags)
            self.rate("system.net.packets_out.error", counters.errout + counters.dropout, tags=tags)
