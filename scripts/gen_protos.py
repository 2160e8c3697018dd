"""Generate the Python protobuf/gRPC code for proto/ into server/gen/.

The generated code is committed; `python scripts/gen_protos.py --check` (run by the test
suite) fails when it differs from what the .proto files produce, so nobody hand-edits it and
nobody forgets to regenerate.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "server" / "gen"
# protoc writes `from nbo.v1 import x_pb2`; the code lives inside the `server` package.
IMPORT_FROM = "from nbo.v1 import"
IMPORT_TO = "from server.gen.nbo.v1 import"


def generate(out: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for path in out.rglob("*.py*"):
        text = path.read_text()
        path.write_text(text.replace(IMPORT_FROM, IMPORT_TO))
    for leaf in {p.parent for p in out.rglob("*_pb2.py")} | {out}:
        for pkg in [leaf, *leaf.parents]:
            (pkg / "__init__.py").touch()
            if pkg == out:
                break


def _tree(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if server/gen is stale")
    opts = parser.parse_args()
    if not opts.check:
        if OUT_DIR.exists():
            shutil.rmtree(OUT_DIR)
        generate(OUT_DIR)
        print(f"generated {len(_tree(OUT_DIR))} files into {OUT_DIR.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "gen"
        generate(fresh)
        want, have = _tree(fresh), _tree(OUT_DIR) if OUT_DIR.exists() else {}
        stale = sorted(
            name
            for name in want.keys() | have.keys()
            if name not in want or name not in have or not filecmp.cmp(want[name], have[name], shallow=False)
        )
    if stale:
        print("server/gen is stale; run `python scripts/gen_protos.py`: " + ", ".join(stale), file=sys.stderr)
        return 1
    print("server/gen matches proto/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
