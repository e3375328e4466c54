"""postgres: the core metrics of the Datadog postgres integration, and its postgres.can_connect service check.

Configured like the Agent's: conf.d/postgres.yaml with instances of host, port, username, password, dbname,
relations (tables to report on) and tags. Rates go through the check sampler (per-second change between runs).
Needs the `postgres` extra (psycopg).
"""

from __future__ import annotations

from typing import Any

from relay.checks.base import AgentCheck

DATABASE_RATES = {  # pg_stat_database column → metric, reported as rates
    "xact_commit": "postgresql.commits",
    "xact_rollback": "postgresql.rollbacks",
    "blks_read": "postgresql.disk_read",
    "blks_hit": "postgresql.buffer_hit",
    "tup_returned": "postgresql.rows_returned",
    "tup_fetched": "postgresql.rows_fetched",
    "tup_inserted": "postgresql.rows_inserted",
    "tup_updated": "postgresql.rows_updated",
    "tup_deleted": "postgresql.rows_deleted",
    "deadlocks": "postgresql.deadlocks",
    "temp_bytes": "postgresql.temp_bytes",
}
RELATION_RATES = {"seq_scan": "postgresql.seq_scans", "idx_scan": "postgresql.index_scans",
                  "n_tup_ins": "postgresql.rows_inserted", "n_tup_upd": "postgresql.rows_updated",
                  "n_tup_del": "postgresql.rows_deleted"}  # fmt: skip
RELATION_GAUGES = {"n_live_tup": "postgresql.live_rows", "n_dead_tup": "postgresql.dead_rows"}


class PostgresCheck(AgentCheck):
    def check(self, instance: dict[str, Any]) -> None:
        import psycopg

        host, port = instance.get("host", "localhost"), int(instance.get("port", 5432))
        dbname = instance.get("dbname", "postgres")
        base_tags = [*instance.get("tags", []), f"host:{host}", f"port:{port}", f"db:{dbname}"]
        try:
            connection = psycopg.connect(
                host=host, port=port, user=instance.get("username", "datadog"), password=instance.get("password"),
                dbname=dbname, connect_timeout=int(instance.get("connect_timeout", 5)), autocommit=True,
            )  # fmt: skip
        except psycopg.Error as error:
            self.service_check("postgres.can_connect", self.CRITICAL, tags=base_tags, message=str(error).strip())
            raise
        self.service_check("postgres.can_connect", self.OK, tags=base_tags)
        with connection, connection.cursor() as cursor:
            self._databases(cursor, instance, dbname)
            self._relations(cursor, instance, dbname)

    def _databases(self, cursor: Any, instance: dict[str, Any], dbname: str) -> None:
        cursor.execute("SHOW max_connections")
        max_connections = int(cursor.fetchone()[0])
        columns = ", ".join(DATABASE_RATES)
        cursor.execute(
            f"SELECT datname, numbackends, pg_database_size(datname), {columns} FROM pg_stat_database "
            "WHERE datname IS NOT NULL AND NOT datname LIKE 'template%'"
        )
        for row in cursor.fetchall():
            tags = [*instance.get("tags", []), f"db:{row[0]}"]
            self.gauge("postgresql.connections", row[1], tags=tags)
            self.gauge("postgresql.percent_usage_connections", row[1] / max_connections, tags=tags)
            self.gauge("postgresql.database_size", row[2], tags=tags)
            for metric, value in zip(DATABASE_RATES.values(), row[3:], strict=True):
                self.rate(metric, value or 0, tags=tags)
        cursor.execute("SELECT schemaname, count(*) FROM pg_stat_user_tables GROUP BY schemaname")
        for schema, count in cursor.fetchall():
            tags = [*instance.get("tags", []), f"db:{dbname}", f"schema:{schema}"]
            self.gauge("postgresql.table.count", count, tags=tags)

    def _relations(self, cursor: Any, instance: dict[str, Any], dbname: str) -> None:
        relations = [r if isinstance(r, str) else r.get("relation_name", "") for r in instance.get("relations", [])]
        if not relations:
            return
        columns = ", ".join([*RELATION_RATES, *RELATION_GAUGES])
        cursor.execute(
            f"SELECT schemaname, relname, {columns} FROM pg_stat_user_tables WHERE relname = ANY(%s)", (relations,)
        )
        for row in cursor.fetchall():
            tags = [*instance.get("tags", []), f"db:{dbname}", f"schema:{row[0]}", f"table:{row[1]}"]
            values = dict(zip([*RELATION_RATES, *RELATION_GAUGES], row[2:], strict=True))
            for column, metric in RELATION_RATES.items():
                self.rate(metric, values[column] or 0, tags=tags)
            for column, metric in RELATION_GAUGES.items():
                self.gauge(metric, values[column] or 0, tags=tags)
