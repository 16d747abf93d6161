#!/usr/bin/env python3
"""Regenerate netdef/_proto/netdef_pb2.py from proto/netdef.proto.

Uses the protoc bundled with grpcio-tools (a test extra), so no system
protobuf compiler is needed:  python tools/gen_proto.py [--check]

--check writes nothing and exits 1 when the committed module is stale.
"""
import argparse
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto"
OUT = ROOT / "netdef" / "_proto" / "netdef_pb2.py"


def generate(out_dir: pathlib.Path) -> pathlib.Path:
    try:
        from grpc_tools import protoc
    except ImportError:
        sys.exit("gen_proto: grpcio-tools is needed: pip install -e '.[test]'")
    import grpc_tools

    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    rc = protoc.main([
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        str(PROTO_DIR / "netdef.proto"),
    ])
    if rc != 0:
        sys.exit(f"gen_proto: protoc failed with exit code {rc}")
    return out_dir / "netdef_pb2.py"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the committed module is out of date")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(pathlib.Path(tmp)).read_text()
    if args.check:
        if not OUT.exists() or OUT.read_text() != fresh:
            print(f"{OUT.relative_to(ROOT)} is stale: run python tools/gen_proto.py",
                  file=sys.stderr)
            return 1
        print("netdef_pb2.py is up to date")
        return 0
    OUT.write_text(fresh)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
