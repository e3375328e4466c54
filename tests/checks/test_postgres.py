"""The postgres collector against a real PostgreSQL server that the test starts (Debian's postgresql package)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import run_relay, wait_for


def _binary(name: str) -> str | None:
    return shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[dict[str, Any]]:
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if not initdb or not pg_ctl:
        message = "no PostgreSQL server here (apt-get install postgresql); .ci/run installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    psycopg = pytest.importorskip("psycopg")
    data = tempfile.mkdtemp(prefix="relay-pg-")
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(data, "postgres", "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    subprocess.run([*as_postgres, initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)  # fmt: skip
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    subprocess.run([*as_postgres, pg_ctl, "-D", data, "-o", options, "-w", "-l", f"{data}/log", "start"],
                   check=True, capture_output=True)  # fmt: skip
    try:
        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True) as db:
            db.execute("CREATE TABLE orders (id serial PRIMARY KEY, total numeric)")
            db.execute("INSERT INTO orders (total) SELECT generate_series(1, 500)")
            db.execute("ANALYZE orders")
        yield {"host": "127.0.0.1", "port": port, "data": data}
    finally:
        subprocess.run([*as_postgres, pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


async def test_postgres_metrics_and_can_connect_reach_the_intake(intake, tmp_path, postgres_server):
    stand_in, url = intake
    confd = tmp_path / "conf.d"
    confd.mkdir()
    (confd / "postgres.yaml").write_text(
        "init_config:\ninstances:\n"
        f"  - host: 127.0.0.1\n    port: {postgres_server['port']}\n    username: postgres\n    dbname: postgres\n"
        "    relations: [orders]\n    tags: ['env:test']\n    min_collection_interval: 1\n"
        "  - host: 127.0.0.1\n    port: 1\n    username: postgres\n    min_collection_interval: 1\n"
    )
    async with run_relay(tmp_path, url, DD_CONFD_PATH=str(confd)) as relay:
        wanted = {"postgresql.connections", "postgresql.percent_usage_connections", "postgresql.database_size",
                  "postgresql.table.count", "postgresql.live_rows", "postgresql.commits", "postgresql.rows_fetched"}  # fmt: skip
        await wait_for(lambda: wanted <= {s["metric"] for s in stand_in.series}, timeout=30)
        await wait_for(
            lambda: {c["status"] for c in stand_in.service_checks if c["check"] == "postgres.can_connect"} == {0, 2}
        )
        status = relay.status()
        await relay.stop()
    live = next(s for s in stand_in.series if s["metric"] == "postgresql.live_rows")
    # n_live_tup is an estimate: ANALYZE, then the insert's pending statistics, can report 500 twice over.
    assert live["points"][0][1] >= 500 and {"table:orders", "schema:public", "env:test"} <= set(live["tags"])
    size = next(s for s in stand_in.series if s["metric"] == "postgresql.database_size" and "db:postgres" in s["tags"])
    assert size["points"][0][1] > 1_000_000
    usage = next(s for s in stand_in.series if s["metric"] == "postgresql.percent_usage_connections")
    assert 0 < usage["points"][0][1] <= 1
    failed = next(c for c in stand_in.service_checks if c["check"] == "postgres.can_connect" and c["status"] == 2)
    assert "port:1" in failed["tags"] and failed["message"]
    errors = [c["last_error"] for c in status["checks"] if c["check"] == "postgres" and c["last_error"]]
    assert errors  # the unreachable instance shows its error, and the other one runs on
