"""Refresh or check the lock files: exact versions with hashes for Linux x86_64, CPython 3.11.

pyproject.toml keeps loose ranges for library users; deployments install the locks instead, so two
installs a week apart run the same grpcio, protobuf and lightgbm:

- requirements.lock: the server's dependencies and the build backend (the container image);
- requirements-dev.lock: the same pins plus the dev extras (`make`, CI).

`python scripts/lock.py` (`make lock`) resolves them with uv, keeping every pin that still fits
(`--upgrade` moves each to its newest). `--check` (run by `make`) fails when a lock no longer
matches pyproject.toml: every requirement, with its extras and its dependencies' own, must be
pinned by a version that satisfies it, and nothing else may be pinned. The dependencies of each
pin are read from the installed packages' metadata, which are the dev lock's own (`make` installs
it first).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
RUNTIME = ROOT / "requirements.lock"
DEV = ROOT / "requirements-dev.lock"
PYTHON_VERSION = "3.11"
PLATFORM = "x86_64-manylinux_2_28"
# the marker values of the target (python:3.11-slim on x86_64), whatever machine checks the lock
TARGET = {
    "python_version": PYTHON_VERSION,
    "python_full_version": f"{PYTHON_VERSION}.0",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", re.MULTILINE)
REFRESH = "run `make lock` and commit requirements.lock and requirements-dev.lock"


@dataclass(frozen=True)
class Inputs:
    runtime: list[Requirement]  # [project] dependencies and [build-system] requires
    dev: list[Requirement]  # the dev extras


def inputs() -> Inputs:
    project = tomllib.loads(PYPROJECT.read_text())
    runtime = project["project"]["dependencies"] + project["build-system"]["requires"]
    dev = project["project"]["optional-dependencies"]["dev"]
    return Inputs([Requirement(r) for r in runtime], [Requirement(r) for r in dev])


def refresh(upgrade: bool) -> None:
    """Resolve both locks; the dev lock is constrained by the runtime one, so they share pins."""
    wanted = inputs()
    with tempfile.TemporaryDirectory() as tmp:
        runtime_in = Path(tmp) / "runtime.in"
        runtime_in.write_text("".join(f"{r}\n" for r in wanted.runtime))
        dev_in = Path(tmp) / "dev.in"
        dev_in.write_text("".join(f"{r}\n" for r in wanted.dev))
        _compile([runtime_in], RUNTIME, upgrade, constraints=None)
        _compile([runtime_in, dev_in], DEV, upgrade, constraints=RUNTIME)


def _compile(sources: list[Path], out: Path, upgrade: bool, constraints: Path | None) -> None:
    command = [str(Path(sys.executable).with_name("uv")), "pip", "compile", *map(str, sources)]
    command += ["--output-file", str(out), "--generate-hashes", "--no-annotate", "--quiet"]
    command += ["--python-version", PYTHON_VERSION, "--python-platform", PLATFORM]
    command += ["--custom-compile-command", "make lock"]
    if constraints is not None:
        command += ["--constraints", str(constraints)]
    if upgrade:
        command.append("--upgrade")
    subprocess.run(command, check=True, cwd=ROOT)


def pins(lock: Path) -> dict[str, Version]:
    """{canonical name: pinned version} of a lock file; every pin must carry a hash."""
    text = lock.read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text)
    found: dict[str, Version] = {}
    for entry in entries:
        match = _PIN.match(entry.strip())
        if match is None:
            continue
        if "--hash=sha256:" not in entry:
            raise SystemExit(f"{lock.name}: {match.group(1)} has no hash; {REFRESH}")
        found[canonicalize_name(match.group(1))] = Version(match.group(2))
    return found


def problems(roots: list[Requirement], pinned: dict[str, Version], lock: str) -> list[str]:
    """What is wrong with `pinned` as the closure of `roots` (empty: the lock is in step)."""
    out: list[str] = []
    reached: set[tuple[str, str]] = set()
    todo = [(r, "pyproject.toml") for r in roots]
    while todo:
        req, why = todo.pop()
        if req.marker is not None and not any(req.marker.evaluate({**TARGET, "extra": e}) for e in _extras(why)):
            continue
        name = canonicalize_name(req.name)
        version = pinned.get(name)
        if version is None:
            out.append(f"{lock}: {req} (needed by {_who(why)}) is not pinned")
            continue
        if not req.specifier.contains(version, prereleases=True):
            out.append(f"{lock}: {name}=={version} does not satisfy {req} (needed by {_who(why)})")
        for extra in ["", *sorted(req.extras)]:
            if (name, extra) in reached:
                continue
            reached.add((name, extra))
            todo.extend((Requirement(dep), f"{name}[{extra}]") for dep in _requires(name, version))
    needed = {name for name, _ in reached}
    out.extend(f"{lock}: {name} is pinned but nothing needs it" for name in sorted(set(pinned) - needed))
    return out


def _extras(why: str) -> list[str]:
    # a dependency read from `name[extra]` counts when its marker holds for no extra or for that one
    extra = why.rpartition("[")[2].rstrip("]") if why.endswith("]") else ""
    return ["", extra] if extra else [""]


def _who(why: str) -> str:
    return why.removesuffix("[]")


def _requires(name: str, version: Version) -> list[str]:
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise SystemExit(f"{name} is pinned but not installed: install the dev lock first (`make`)") from None
    if Version(dist.version) != version:
        raise SystemExit(f"{name} {dist.version} is installed, the lock pins {version}: reinstall from the lock")
    return dist.requires or []


def check() -> int:
    wanted = inputs()
    runtime, dev = pins(RUNTIME), pins(DEV)
    found = problems(wanted.runtime, runtime, RUNTIME.name) + problems(wanted.runtime + wanted.dev, dev, DEV.name)
    found += [
        f"{DEV.name} pins {name}=={dev[name]}, {RUNTIME.name} {version}"
        for name, version in sorted(runtime.items())
        if name in dev and dev[name] != version
    ]
    for line in found:
        print(f"lock out of step: {line}", file=sys.stderr)
    if found:
        print(f"the lock files do not match pyproject.toml: {REFRESH}", file=sys.stderr)
    return 1 if found else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a lock file is out of step with pyproject.toml")
    parser.add_argument("--upgrade", action="store_true", help="move every pin to its newest version")
    opts = parser.parse_args()
    if opts.check:
        return check()
    refresh(opts.upgrade)
    return 0


if __name__ == "__main__":
    sys.exit(main())
