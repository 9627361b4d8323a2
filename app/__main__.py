"""`python -m app [--host H] [--port P] [--auth USER:PASS] [--allow-dir DIR]... [--no-hub] [--data FILE]
[--tokenizer NAME] [--rules FILE]... [--strategy-file FILE.py]... [--collator FILE.py]...`: serve MaskLens.

--rules / --strategy-file / --collator register strategies once, at start: every session lists them. The two Python
flags import and run the file in the server process (core.user_code); nothing a web user uploads or types can.
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m app", description="Serve the MaskLens web app.")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--auth", metavar="USER:PASS", help="require this login (recommended with --host 0.0.0.0)")
    p.add_argument("--allow-dir", action="append", metavar="DIR", default=None,
                   help="a folder users may load tokenizers and models from by path (repeatable). Beyond loopback "
                        "the default is the project's assets/, the MaskLens cache and the runs folder; on "
                        "127.0.0.1 any folder unless this is given")
    p.add_argument("--no-hub", action="store_true", help="refuse hub ids: load tokenizers and models only from the "
                                                         "allowed folders")
    p.add_argument("--data", metavar="FILE", help="dataset every page opens with (default: a bundled sample)")
    p.add_argument("--tokenizer", metavar="NAME", help="tokenizer every page opens with: 'embedded' (default), a hub "
                                                       "id or a local directory")
    p.add_argument("--max-file-size", default="50mb", help="largest upload accepted (default 50mb)")
    g = p.add_argument_group("your own masking (registered at start; every session lists them as strategies)")
    g.add_argument("--rules", action="append", metavar="FILE", default=[],
                   help="declarative masking rules (.json/.yaml), registered as rules:<name> (repeatable)")
    g.add_argument("--strategy-file", action="append", metavar="FILE.py", default=[],
                   help="a Python file registering strategies with @register (repeatable). RUNS the file's code in "
                        "the server")
    g.add_argument("--collator", action="append", metavar="FILE.py", default=[],
                   help="a Python file defining make_collator(tokenizer), registered as collator:<file stem> "
                        "(repeatable). RUNS the file's code in the server")
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
    from core.errors import MaskLensError  # noqa: PLC0415  (heavy imports after argument errors)
    from core.paths import set_policy  # noqa: PLC0415

    from .main import build_app, is_loopback, launch_options, path_policy  # noqa: PLC0415
    from .session import register_startup_strategies  # noqa: PLC0415

    try:
        names = register_startup_strategies(args.rules, args.strategy_file, args.collator)
    except MaskLensError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if names:
        print(f"MaskLens: strategies registered at start: {', '.join(names)}", file=sys.stderr)

    policy = path_policy(args.host, args.allow_dir, args.no_hub, operator_paths=[args.tokenizer])
    set_policy(policy)
    if not is_loopback(args.host):
        print(f"MaskLens listens on {args.host}: users may load {policy.describe()}.", file=sys.stderr)
        if auth is None:
            print("warning: no --auth: anyone who reaches this port can use the app and start training runs.",
                  file=sys.stderr)
    demo = build_app(default_data=args.data, default_tokenizer=args.tokenizer)
    demo.launch(server_name=args.host, server_port=args.port, auth=auth, show_error=True,
                **launch_options(args.max_file_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
