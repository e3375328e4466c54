"""A sender's pid, or its cgroup's inode (`c:in-<inode>`), → its container id, from a fake /proc and a fake cgroup
tree laid out as docker, containerd and cri-o lay out theirs, under cgroupfs and systemd drivers, v1 and v2; the
rules are the Agent's (pkg/util/cgroups: the memory controller's line on v1, the unified line on v2, the id in the
path's last segment, no `.mount` unit and no `crio-conmon-` monitor)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relay.tagger import Tagger
from relay.tagger.cgroups import CgroupResolver, container_of_cgroup_file
from relay.tagger.kubelet import KubeletClient, KubeletSource

ID = "0123456789abcdef" * 4
POD = "pod6f1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d"
SYSTEMD_POD = "kubepods-burstable-pod6f1b2c3d_4e5f_6a7b_8c9d_0e1f2a3b4c5d.slice"
V1_REST = "12:pids:/docker/{id}\n4:cpu,cpuacct:/docker/{id}\n1:name=systemd:/docker/{id}\n0::/\n"

CGROUP_FILES = [
    ("docker, cgroup v1", f"5:memory:/docker/{ID}\n" + V1_REST.format(id=ID), ID),
    ("docker, systemd driver, v2", f"0::/system.slice/docker-{ID}.scope\n", ID),
    ("containerd on Kubernetes, cgroupfs, v1", f"9:memory:/kubepods/burstable/{POD}/{ID}\n", ID),
    ("containerd on Kubernetes, cgroupfs, v2", f"0::/kubepods/besteffort/{POD}/{ID}\n", ID),
    ("containerd on Kubernetes, systemd, v2",
     f"0::/kubepods.slice/kubepods-burstable.slice/{SYSTEMD_POD}/cri-containerd-{ID}.scope\n", ID),
    ("cri-o on Kubernetes, systemd, v2", f"0::/kubepods.slice/kubepods-burstable.slice/{SYSTEMD_POD}/crio-{ID}.scope\n", ID),
    ("cri-o, v1", f"11:memory:/kubepods.slice/{SYSTEMD_POD}/crio-{ID}.scope\n", ID),
    ("podman, systemd, v2", f"0::/machine.slice/libpod-{ID}.scope/container\n", None),  # the id is not the last segment
    ("ECS task", "0::/ecs/8d2b1a0e0f2c4e1f9a8b7c6d5e4f3a2b/8d2b1a0e0f2c4e1f9a8b7c6d5e4f3a2b-2851396126\n",
     "8d2b1a0e0f2c4e1f9a8b7c6d5e4f3a2b-2851396126"),
    ("cri-o's conmon (the monitor, not the container)", f"0::/kubepods.slice/{SYSTEMD_POD}/crio-conmon-{ID}.scope\n", None),
    ("a systemd .mount unit", f"0::/system.slice/run-docker-{ID}.mount\n", None),
    ("a host process, v2", "0::/user.slice/user-1000.slice/session-2.scope\n", None),
    ("a host process, v1 (the memory line rules)", f"4:cpu:/docker/{ID}\n5:memory:/user.slice\n0::/\n", None),
    ("a pod's own cgroup (its UID is no container id)", f"0::/kubepods/besteffort/{POD}\n", None),
    ("empty", "", None),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CGROUP_FILES], ids=[c[0] for c in CGROUP_FILES])
def test_a_cgroup_file_gives_the_container_as_the_agent_reads_it(text, expected):
    assert container_of_cgroup_file(text) == expected


def tagger_on(tmp_path: Path) -> Tagger:
    """A tagger whose /proc and cgroup tree are fake (its kubelet is never asked here)."""
    source = KubeletSource(KubeletClient("127.0.0.1", https_port=1, http_port=0))
    return Tagger(source, proc_root=str(tmp_path / "proc"), cgroup_root=str(tmp_path / "cgroup"))


def write_proc(tmp_path: Path, pid: int, text: str) -> None:
    (tmp_path / "proc" / str(pid)).mkdir(parents=True, exist_ok=True)
    (tmp_path / "proc" / str(pid) / "cgroup").write_text(text)


def test_a_pid_is_resolved_from_its_proc_cgroup_file_and_cached(tmp_path):
    tagger = tagger_on(tmp_path)
    for pid, (_, text, _) in enumerate(CGROUP_FILES, start=100):
        write_proc(tmp_path, pid, text)
    for pid, (name, _, expected) in enumerate(CGROUP_FILES, start=100):
        assert tagger.container_of_pid(pid) == expected, name
    assert tagger.container_of_pid(99999) is None  # gone, or never was
    write_proc(tmp_path, 100, "0::/user.slice\n")  # the pid now belongs to a host process
    assert tagger.container_of_pid(100) == ID, "cached for a few seconds"
    fresh = CgroupResolver(str(tmp_path / "proc"), pid_ttl=0)
    assert fresh.container_of_pid(100) is None


def make_dir(root: Path, relative: str) -> int:
    path = root / relative
    path.mkdir(parents=True)
    return os.stat(path).st_ino


def test_an_inode_is_the_container_whose_cgroup_directory_it_is_on_cgroup_v2(tmp_path):
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu memory pids\n")  # the unified hierarchy's mark
    other = "fedcba9876543210" * 4
    containerd = make_dir(root, f"kubepods.slice/kubepods-burstable.slice/{SYSTEMD_POD}/cri-containerd-{ID}.scope")
    docker = make_dir(root, f"system.slice/docker-{other}.scope")
    mount = make_dir(root, f"system.slice/run-docker-{other}.mount")
    pod = os.stat(root / f"kubepods.slice/kubepods-burstable.slice/{SYSTEMD_POD}").st_ino
    tagger = tagger_on(tmp_path)
    assert tagger.container_of_inode(containerd) == ID
    assert tagger.container_of_inode(docker) == other
    assert tagger.container_of_inode(mount) is None and tagger.container_of_inode(pod) is None


def test_an_inode_on_cgroup_v1_is_looked_up_in_the_memory_controllers_tree(tmp_path):
    root = tmp_path / "cgroup"
    memory = make_dir(root, f"memory/docker/{ID}")
    cpu = make_dir(root, f"cpu/docker/{ID}")
    tagger = tagger_on(tmp_path)
    assert tagger.container_of_inode(memory) == ID
    assert tagger.container_of_inode(cpu) is None


def test_a_container_started_after_the_walk_is_found_on_the_next_one(tmp_path):
    root = tmp_path / "cgroup"
    (root / "system.slice").mkdir(parents=True)
    now = [0.0]
    resolver = CgroupResolver(cgroup_root=str(root), rescan_interval=2.0, clock=lambda: now[0])
    assert resolver.container_of_inode(12345) is None  # walks once
    inode = make_dir(root, f"system.slice/docker-{ID}.scope")
    assert resolver.container_of_inode(inode) is None, "a miss walks again at most every two seconds"
    now[0] = 2.5
    assert resolver.container_of_inode(inode) == ID
