"""
Building the repository's ``Containerfile`` with podman and running its images.

No image registry need be reachable: without ``PUSHPROX_E2E_BASE_IMAGE`` the Python base
image is made locally with debootstrap (Debian's python3 and its venv module) from the
Debian mirror apt already uses, and kept between runs. pip inside the build gets this
machine's pip configuration (``pip config list`` and ``PIP_*``), in a file of its own and
with every file and folder it names mounted read-only, so a build works behind a private
index too; the ``Containerfile`` itself stays the one users build.

podman's run-time settings (the ``runc`` runtime when it is installed, ulimits that an
unprivileged VM accepts) come from a ``containers.conf`` of the tests' own, named by
``CONTAINERS_CONF`` for every podman command run here.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.harness.processes import SOURCE_ROOT, Process, ProcessGroup

PODMAN = os.environ.get("PUSHPROX_E2E_PODMAN") or shutil.which("podman") or "/usr/bin/podman"
DEBOOTSTRAP = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
#: The base image built locally when none is named; reused once it exists.
LOCAL_BASE_IMAGE = "localhost/pushprox-debian-python:bookworm"
BASE_IMAGE = os.environ.get("PUSHPROX_E2E_BASE_IMAGE", LOCAL_BASE_IMAGE)
#: Where the built image's pip configuration is mounted during the build.
_PIP_CONFIG_IN_BUILD = "/pushprox-build/pip.conf"
#: Debian suite of the local base image (Python 3.11).
_SUITE = "bookworm"


def missing_tools() -> list[str]:
    """What the container tests need and this machine lacks, each with its Debian package."""
    needed = [(PODMAN, "podman")]
    if BASE_IMAGE == LOCAL_BASE_IMAGE:
        needed.append((DEBOOTSTRAP, "debootstrap"))
    missing = [f"{path} is missing (Debian package {package})"
               for path, package in needed if not os.access(path, os.X_OK)]
    if not missing and BASE_IMAGE == LOCAL_BASE_IMAGE and os.geteuid() != 0:
        missing.append("debootstrap needs root to make the base image "
                       "(or name one in PUSHPROX_E2E_BASE_IMAGE)")
    return missing


def containers_conf(directory: Path) -> Path:
    """A containers.conf for podman on a VM: runc when installed, ulimits it may set."""
    lines = ["[containers]",
             'default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]']
    runc = shutil.which("runc") or ("/usr/sbin/runc" if os.path.exists("/usr/sbin/runc")
                                     else None)
    if runc is not None:
        # crun refuses cgroup v1/v2 hybrid hosts, where runc works; elsewhere both do.
        lines += ["[engine]", f'runtime = "{runc}"']
    path = directory / "containers.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


class Podman:
    """podman with the tests' own containers.conf; logs of builds go to files."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "CONTAINERS_CONF": str(containers_conf(directory))}

    def argv(self, *args: str) -> list[str]:
        """A podman command line."""
        return [PODMAN, *args]

    def run(self, *args: str, timeout: float = 120, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        """Run one podman command to its end; its output in the result."""
        done = subprocess.run(self.argv(*args), env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited with {done.returncode}:\n"
                                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def image_exists(self, image: str) -> bool:
        """Whether the image is in podman's local store."""
        return self.run("image", "exists", image, check=False).returncode == 0

    def image_size(self, image: str) -> int:
        """The image's size in bytes, as ``podman images`` counts it."""
        return int(self.run("image", "inspect", "--format", "{{.Size}}", image).stdout)

    def image_config(self, image: str) -> dict[str, object]:
        """The image's configuration (user, entry point, healthcheck, environment...)."""
        inspected = json.loads(self.run("image", "inspect", image).stdout)
        config: dict[str, object] = inspected[0]["Config"]
        # podman keeps the healthcheck beside the OCI configuration, which has none.
        return {**config, "Healthcheck": inspected[0].get("Healthcheck")}

    def ensure_base_image(self) -> str:
        """The Python base image: ``BASE_IMAGE``, made with debootstrap if needed."""
        if self.image_exists(BASE_IMAGE):
            return BASE_IMAGE
        if BASE_IMAGE != LOCAL_BASE_IMAGE:
            self.run("pull", BASE_IMAGE, timeout=600)
            return BASE_IMAGE
        rootfs = self.directory / "base-rootfs"
        log = self.directory / "debootstrap.log"
        with open(log, "wb") as output:
            done = subprocess.run(
                [DEBOOTSTRAP, "--variant=minbase", "--include=python3,python3-venv",
                 _SUITE, str(rootfs), debian_mirror()],
                stdout=output, stderr=subprocess.STDOUT, timeout=900, check=False)
        if done.returncode != 0:
            tail = log.read_text("utf-8", "replace")[-3000:]
            raise AssertionError(f"debootstrap exited with {done.returncode}:\n{tail}")
        # What a base image does not need: documentation, apt's package lists and cache.
        for unneeded in ("usr/share/doc", "usr/share/man", "usr/share/info",
                         "usr/share/locale", "var/cache/apt", "var/lib/apt/lists"):
            shutil.rmtree(rootfs / unneeded, ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            imported = subprocess.run(self.argv("import", "-", LOCAL_BASE_IMAGE),
                                      stdin=tar.stdout, env=self.env, capture_output=True,
                                      text=True, timeout=600, check=False)
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            tar.wait()
        shutil.rmtree(rootfs, ignore_errors=True)
        if imported.returncode != 0:
            raise AssertionError(f"podman import failed: {imported.stderr[-3000:]}")
        return LOCAL_BASE_IMAGE

    def build(self, tag: str, *, target: str | None = None, base: str) -> None:
        """Build the repository's Containerfile (its ``target`` stage) as ``tag``."""
        pip_options = pip_build_options(self.directory)
        args = ["build", "--format", "docker", "--network", "host",
                "--build-arg", f"BASE={base}", *pip_options,
                *(["--target", target] if target else []),
                "-t", tag, "-f", str(SOURCE_ROOT / "Containerfile"), str(SOURCE_ROOT)]
        log = self.directory / f"build-{target or 'default'}.log"
        with open(log, "wb") as output:
            done = subprocess.run(self.argv(*args), env=self.env, stdout=output,
                                  stderr=subprocess.STDOUT, timeout=1200, check=False)
        if done.returncode != 0:
            tail = log.read_text("utf-8", "replace")[-4000:]
            raise AssertionError(f"podman {' '.join(args)} exited with {done.returncode}:\n"
                                 f"{tail}")

    def container(
        self,
        group: ProcessGroup,
        name: str,
        image: str,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        files: Mapping[Path, str] | None = None,
    ) -> Container:
        """
        ``podman run --network host`` in the foreground, as a process of ``group``: its
        log is the container's output, and stopping the process stops the container.
        ``files`` are mounted read-only, each host file at the path given in the container.
        """
        container_name = f"pushprox-test-{name}-{os.getpid()}"
        self.run("rm", "--force", "--ignore", container_name)
        environment = [f"--env={key}={value}" for key, value in (env or {}).items()]
        mounts = [f"--volume={source}:{target}:ro" for source, target in (files or {}).items()]
        argv = self.argv("run", "--name", container_name, "--network", "host",
                         *environment, *mounts, image, *args)
        process = Process(name, argv, group.directory(name), env=self.env)
        group.processes.append(process)
        process.start()
        return Container(self, container_name, process)


class Container:
    """A container running in the foreground under ``podman run``."""

    def __init__(self, podman: Podman, name: str, process: Process) -> None:
        self.podman = podman
        self.name = name
        self.process = process

    def stop(self, timeout: int) -> int | None:
        """``podman stop --time TIMEOUT``: SIGTERM, SIGKILL after ``timeout`` s; exit code."""
        self.podman.run("stop", "--time", str(timeout), self.name, timeout=timeout + 60)
        self.process.wait_exit(30)
        return self.process.returncode

    def healthcheck(self) -> subprocess.CompletedProcess[str]:
        """Run the image's healthcheck once now."""
        return self.podman.run("healthcheck", "run", self.name, check=False)

    def remove(self) -> None:
        """Remove the container, running or not."""
        self.podman.run("rm", "--force", "--ignore", self.name)


def debian_mirror() -> str:
    """The Debian mirror this machine's apt sources name (deb.debian.org without one)."""
    sources = [Path("/etc/apt/sources.list"),
               *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for source in sources:
        try:
            text = source.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            line = line.strip()
            found = (re.match(r"URIs:\s*(\S+)", line)
                     or re.match(r"deb\s+(?:\[[^]]*\]\s+)?(\S+)", line))
            if found and "security" not in found.group(1):
                return found.group(1)
    return "http://deb.debian.org/debian"


def pip_settings() -> dict[str, str]:
    """This machine's pip settings: ``pip config list``, then the ``PIP_*`` variables."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                            capture_output=True, text=True, check=False, timeout=60)
    settings: dict[str, str] = {}
    for line in listed.stdout.splitlines():
        key, equals, value = line.partition("=")
        if equals and "." in key:
            settings[key.split(".", 1)[1]] = str(ast.literal_eval(value))
    for variable, value in os.environ.items():
        if variable.startswith("PIP_") and variable != "PIP_CONFIG_FILE":
            settings[variable[4:].lower().replace("_", "-")] = value
    return settings


def pip_build_options(directory: Path) -> list[str]:
    """
    ``podman build`` options giving pip in the build this machine's pip settings: one
    configuration file, and each file or folder it names mounted read-only at its path.
    """
    settings = pip_settings()
    if not settings:
        return []
    config = directory / "pip.conf"
    config.write_text("[global]\n" + "".join(f"{key} = {value}\n"
                                             for key, value in sorted(settings.items())))
    mounts = {str(config): _PIP_CONFIG_IN_BUILD}
    for value in settings.values():
        for word in value.split():
            path = word.removeprefix("file://")
            if not path.startswith("/") or not os.path.exists(path):
                continue
            if os.path.basename(path.rstrip("/")) == "simple":
                # A local index's pages link to its wheels in a sibling folder.
                path = os.path.dirname(path.rstrip("/"))
            mounts[path] = path
    options = ["--build-arg", f"PIP_CONFIG_FILE={_PIP_CONFIG_IN_BUILD}"]
    for source, target in mounts.items():
        options += ["-v", f"{source}:{target}:ro"]
    return options
