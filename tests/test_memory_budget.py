"""relay/memory.py: the limit read from a cgroup as the kernel lays it out, and the budget shared out of it.

The cgroup trees here are files written the way cgroup v1 and v2 present them (a /proc/self/cgroup, a mountinfo,
the controller files); tests/test_memory.py runs the relay in a real cgroup."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import ConfigError
from relay.memory import CONTEXT_BYTES, HEADROOM, MemoryLimit, cgroup_limit, limit_of, plan
from tests.conftest import config

MIB = 2**20


def proc_tree(tmp_path: Path, cgroup: str, mounts: list[str]) -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup)
    (proc / "self" / "mountinfo").write_text("".join(line + "\n" for line in mounts))
    (proc / "meminfo").write_text("MemTotal:       24683520 kB\n")
    return proc


def write(path: Path, text: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for line in text.split(";"):
        name, value = line.split("=")
        (path / name).write_text(value + "\n")


def test_cgroup_v2_reads_memory_max_and_takes_the_lowest_along_the_ancestors(tmp_path):
    root = tmp_path / "cg"
    proc = proc_tree(tmp_path, "0::/kubepods/pod1/ctr\n", [f"30 23 0:26 / {root} rw - cgroup2 cgroup2 rw"])
    write(root / "kubepods", "memory.max=max")
    write(root / "kubepods" / "pod1", f"memory.max={512 * MIB}")  # the pod's limit
    write(root / "kubepods" / "pod1" / "ctr", "memory.max=max")  # the container has none of its own
    found = cgroup_limit(proc)
    assert found is not None and found.bytes == 512 * MIB
    assert str(root / "kubepods" / "pod1" / "memory.max") in found.source


def test_cgroup_v1_reads_memory_limit_in_bytes_and_ignores_its_no_limit_number(tmp_path):
    root = tmp_path / "memory"
    proc = proc_tree(
        tmp_path,
        "5:cpu,cpuacct:/x\n4:memory:/relay\n0::/\n",
        [
            f"35 31 0:32 / {root} rw,relatime - cgroup cgroup rw,memory",
            f"41 31 0:38 / {tmp_path}/u rw - cgroup2 cgroup2 rw",
        ],
    )
    write(root, "memory.limit_in_bytes=9223372036854771712")
    write(root / "relay", f"memory.limit_in_bytes={128 * MIB}")
    found = cgroup_limit(proc)  # v2 is mounted but has no memory controller there: v1 answers
    assert found is not None and found.bytes == 128 * MIB


def test_inside_a_container_the_mount_root_is_the_containers_cgroup(tmp_path):
    """With a cgroup namespace the mount's root is the container's own cgroup, and /proc/self/cgroup says '/'."""
    root = tmp_path / "cg"
    proc = proc_tree(tmp_path, "0::/\n", [f"30 23 0:26 / {root} ro - cgroup2 cgroup2 rw"])
    write(root, f"memory.max={256 * MIB}")
    assert cgroup_limit(proc) == MemoryLimit(256 * MIB, f"the cgroup's {root / 'memory.max'}")


def test_the_key_wins_then_the_cgroup_then_the_hosts_memory(tmp_path):
    proc = proc_tree(tmp_path, "0::/\n", [f"30 23 0:26 / {tmp_path}/none rw - cgroup2 cgroup2 rw"])
    assert limit_of(config(relay__memory_limit="1Gi"), proc) == MemoryLimit(2**30, "relay.memory_limit")
    assert limit_of(config(), proc) == MemoryLimit(24683520 * 1024, "the host's memory")


def test_the_budget_shares_the_limit_and_only_ever_lowers_a_configured_bound():
    budget = plan(config(), MemoryLimit(512 * MIB, "test"), started=40 * MIB)
    shares = budget.shares()
    assert sum(shares.values()) <= 512 * MIB * HEADROOM
    assert budget.contexts * CONTEXT_BYTES == shares["contexts"] and budget.contexts_per_metric == budget.contexts // 2
    applied = budget.apply(config())
    assert applied.relay_receive_queue_bytes < config().relay_receive_queue_bytes  # 64 MiB does not fit a tenth
    assert applied.relay_max_contexts == budget.contexts < 1_000_000
    roomy = plan(config(relay__max_contexts=5000, relay__max_contexts_per_metric=4000), MemoryLimit(64 * 2**30, "t"), 0)
    assert (roomy.contexts, roomy.contexts_per_metric) == (5000, 4000)
    assert (
        roomy.apply(config()).forwarder_retry_queue_payloads_max_size
        == config().forwarder_retry_queue_payloads_max_size
    )


def test_a_limit_that_cannot_hold_the_relay_is_refused_with_one_line_naming_the_key():
    with pytest.raises(ConfigError) as refused:
        plan(config(), MemoryLimit(64 * MIB, "the cgroup's memory.max"), started=45 * MIB)
    message = str(refused.value)
    assert message.startswith("relay.memory_limit: 64 MiB (the cgroup's memory.max) cannot hold the relay")
    assert "\n" not in message


def test_the_guard_holds_new_contexts_and_empties_the_caches_past_85_percent_and_lets_go_under_75():
    from relay.memory import MemoryGuard, resident_bytes
    from relay.pipeline.assemble import Pipeline

    pipeline = Pipeline(config(relay__host_collectors=""))
    for user in range(100):
        pipeline.datagram(b"logins:1|c|#user:%d" % user, "udp")
    resident = resident_bytes()
    tight = plan(config(), MemoryLimit(int(resident / 0.8), "test"), started=0)  # resident is 80 % of it
    guard = MemoryGuard(tight, pipeline.stats, pipeline.hold_memory)
    guard.check(1000.0)
    assert not guard.held and pipeline.ingest.shapes  # between 75 and 85 %: as it was
    guard.limit = int(resident / 0.9)
    guard.check(1001.0)
    assert guard.held and pipeline.aggregator.held_at == 100 and not pipeline.ingest.shapes
    pipeline.datagram(b"logins:1|c|#user:new", "udp")
    assert pipeline.aggregator.contexts == 101 and pipeline.stats.aggregate.memory_holds == 1  # folded, counted
    guard.check(1001.5)
    assert any(reason.startswith("memory: resident") for reason in pipeline.stats.info["degraded"])
    assert any("contexts folding" in reason for reason in pipeline.stats.info["degraded"])
    guard.limit = resident * 2
    guard.check(1002.0)
    assert not guard.held and pipeline.aggregator.held_at == 0
