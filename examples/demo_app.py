"""Demo app for the local stack: emits every DogStatsD kind through the official `datadog` client, forever."""

from __future__ import annotations

import os
import random
import time

from datadog.dogstatsd import DogStatsd

host, port = os.environ.get("DD_AGENT_HOST", "127.0.0.1"), int(os.environ.get("DD_DOGSTATSD_PORT", "8125"))
udp = DogStatsd(host=host, port=port, constant_tags=["app:demo", "transport:udp"])
socket_path = os.environ.get("DEMO_SOCKET", "")
uds = DogStatsd(socket_path=socket_path, constant_tags=["app:demo", "transport:uds"]) if socket_path else None

while True:
    for statsd in filter(None, (udp, uds)):
        statsd.gauge("my_metric", random.randint(0, 1000), tags=["check_group:test"])
        statsd.increment("demo.requests", tags=[f"route:/{random.choice(['home', 'cart', 'pay'])}"])
        statsd.gauge("demo.queue.depth", random.randint(0, 50))
        statsd.histogram("demo.request.duration", random.expovariate(1 / 120), tags=["route:/home"])
        statsd.distribution("demo.payload.bytes", random.lognormvariate(7, 1))
        statsd.timing("demo.db.query", random.uniform(1, 30))
        statsd.set("demo.users", f"user-{random.randint(1, 40)}")
    if random.random() < 0.05:
        udp.event("Demo deploy", "a new version of the demo app", alert_type="info", tags=["team:demo"])
    udp.service_check("demo.can_connect", random.choice([0, 0, 0, 1]), message="demo check")
    time.sleep(1)
