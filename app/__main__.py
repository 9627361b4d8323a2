"""`python -m app [--host H] [--port P] [--auth USER:PASS] [--data FILE] [--tokenizer NAME]`: serve MaskLens."""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m app", description="Serve the MaskLens web app.")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--auth", metavar="USER:PASS", help="require this login (recommended with --host 0.0.0.0)")
    p.add_argument("--data", metavar="FILE", help="dataset every page opens with (default: a bundled sample)")
    p.add_argument("--tokenizer", metavar="NAME", help="tokenizer every page opens with: 'embedded' (default), a hub "
                                                       "id or a local directory")
    p.add_argument("--max-file-size", default="50mb", help="largest upload accepted (default 50mb)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    auth = None
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep or not user or not password:
            print("error: --auth takes USER:PASS", file=sys.stderr)
            return 2
        auth = (user, password)
    from .main import build_app, launch_options  # noqa: PLC0415  (heavy imports after argument errors)

    demo = build_app(default_data=args.data, default_tokenizer=args.tokenizer)
    demo.launch(server_name=args.host, server_port=args.port, auth=auth, show_error=True,
                **launch_options(args.max_file_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
