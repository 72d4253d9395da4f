"""The `pcert` command line: a thin shell over `pcert.api`, owning only exit codes and printing.

Exit codes: 0 every gate holds, 1 a gate failed, 2 bad spec/usage/input, 3 internal or resource
failure. Errors are printed as messages, never as tracebacks (set PCERT_DEBUG=1 to see one).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Sequence

from pcert.errors import PcertError
from pcert.openmp import shorten_openmp_spinning


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pcert", description="Certify models against training-data poisoning.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("compile", help="check a spec and write its plan (nothing is trained)")
    p.add_argument("spec", type=Path)
    p.add_argument("-o", "--output", type=Path, help="folder for the plan (default: the spec's output folder)")
    p.add_argument("--no-parity", action="store_true", help="skip the ONNX-vs-torch parity check")

    p = sub.add_parser("run", help="compile (if given a spec) and execute; write a proof report; gate")
    p.add_argument("target", type=Path, help="a .pcert/.yaml spec or a plan .json")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"])
    p.add_argument("--seed", type=int)
    p.add_argument("--output", type=Path, help="root folder for run directories")
    p.add_argument("--quiet", action="store_true", help="no progress bars (CI)")
    p.add_argument("--junit", type=Path, help="write JUnit XML with one test case per gate")

    p = sub.add_parser("check", help="independently re-verify a run directory")
    p.add_argument("run_dir", type=Path)

    p = sub.add_parser("report", help="print the summary table of a run directory")
    p.add_argument("run_dir", type=Path)

    p = sub.add_parser("model", help="write a seeded ONNX architecture")
    p.add_argument("kind", choices=["mlp", "conv"])
    p.add_argument("layout", help="mlp: sizes such as 2,128,2; conv: e.g. 1x8x8,8c3,relu,flatten,10 (see docs/language.md)")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--activation", choices=["relu", "sigmoid", "tanh"], default="relu")
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    from pcert import api

    if args.command == "compile":
        plan_path, summary = api.compile_to_file(args.spec, output=args.output, parity=not args.no_parity)
        print(summary)
        print(f"wrote {plan_path}")
        return 0
    if args.command == "run":
        outcome = api.run(args.target, device=args.device, seed=args.seed, output=args.output,
                          quiet=args.quiet, junit=args.junit)
        print(outcome.text)
        return outcome.exit_code
    if args.command == "check":
        result = api.check(args.run_dir)
        print(result.render())
        return 0 if result.ok else 1
    if args.command == "report":
        print(api.report(args.run_dir))
        return 0
    if args.command == "model":
        path = api.build_model(args.kind, args.layout, args.output, seed=args.seed, activation=args.activation)
        print(f"wrote {path}")
        return 0
    raise AssertionError(args.command)


def main(argv: Sequence[str] | None = None) -> int:
    if hasattr(signal, "SIGPIPE") and argv is None:  # `pcert report RUN | head`: end quietly like other tools
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        from pcert import __version__

        print(f"pcert {__version__}")
        return 0
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    shorten_openmp_spinning()  # before anything imports torch
    try:
        return _dispatch(args)
    except PcertError as exc:
        print(str(exc) if "error:" in str(exc) else f"pcert: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("pcert: interrupted; no report was written", file=sys.stderr)
        return 130
    except MemoryError:
        print("pcert: error: out of memory (try a smaller batch, fewer sweep points or device cuda)", file=sys.stderr)
        return 3
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence: no tracebacks for users
        if os.environ.get("PCERT_DEBUG"):
            traceback.print_exc()
        print(f"pcert: internal error: {type(exc).__name__}: {exc} (set PCERT_DEBUG=1 for a traceback)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
