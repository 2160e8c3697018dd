"""scripts/lock.py --check: a lock is in step with pyproject.toml when it pins exactly the closure of
the requirements (extras and markers followed, for Linux CPython 3.11), each pin satisfying every
requirement on it and carrying a hash. Checked on small locks made here, and on the real ones."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent.parent
SCRIPT = ROOT / "scripts" / "lock.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lock_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


lock = _load()
REDIS, HIREDIS = Version(metadata.version("redis")), Version(metadata.version("hiredis"))
ROOTS = [Requirement("redis[hiredis]>=5.0")]
# redis needs async-timeout only before Python 3.11.3; the lock's target is 3.11 (3.11.0)
CLOSED = {"redis": REDIS, "hiredis": HIREDIS, "async-timeout": Version(metadata.version("async-timeout"))}


def test_the_closure_of_the_requirements_is_in_step() -> None:
    assert lock.problems(ROOTS, CLOSED, "x.lock") == []


@pytest.mark.parametrize(
    ("roots", "pinned", "message"),
    [
        (
            ROOTS,
            {**CLOSED, "hiredis": None},
            'x.lock: hiredis>=3.2.0; extra == "hiredis" (needed by redis[hiredis]) is not pinned',
        ),
        (
            [Requirement("redis[hiredis]>=99")],
            CLOSED,
            f"x.lock: redis=={REDIS} does not satisfy redis[hiredis]>=99 (needed by pyproject",
        ),
        ([Requirement("redis>=5")], CLOSED, "x.lock: hiredis is pinned but nothing needs it"),
        ([*ROOTS, Requirement("not-a-package>=1")], CLOSED, "x.lock: not-a-package>=1 (needed by pyproject.toml)"),
    ],
)
def test_what_is_out_of_step_is_named(
    roots: list[Requirement], pinned: dict[str, Version | None], message: str
) -> None:
    found = lock.problems(roots, {k: v for k, v in pinned.items() if v is not None}, "x.lock")
    assert len(found) == 1 and found[0].startswith(message), found


def test_a_marker_for_another_platform_needs_nothing() -> None:
    assert lock.problems([Requirement("pywin32>=300; sys_platform == 'win32'")], {}, "x.lock") == []


def test_pins_are_read_with_their_hashes(tmp_path: Path) -> None:
    good = tmp_path / "good.lock"
    entries = ["# header", "PyYAML==6.0.4 \\", "    --hash=sha256:aa \\", "    --hash=sha256:bb"]
    good.write_text("\n".join([*entries, "uv==0.13.9 \\", "    --hash=sha256:cc", ""]))
    assert lock.pins(good) == {"pyyaml": Version("6.0.4"), "uv": Version("0.13.9")}
    bare = tmp_path / "bare.lock"
    bare.write_text("pyyaml==6.0.4\n")
    with pytest.raises(SystemExit, match="pyyaml has no hash; run `make lock`"):
        lock.pins(bare)


def test_the_committed_locks_are_in_step_with_pyproject() -> None:
    checked = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr
