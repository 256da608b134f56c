"""``main``: the parser (each command module adds its own) and how every command ends: a user's mistake is
one line and exit code 2, Ctrl-C and SIGTERM exit 130 and 143 with how to resume. Ray is imported only
when a command runs a search."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

from ..errors import C2FError, ConfigError, Interrupted
from ..layout import RunDir, SearchDir
from . import confirm, demo, export, flops, pareto, report, search, train
from .args import EPILOG_SCHEDULE, Parser, config_error_line

COMMANDS = (train, flops, search, pareto, confirm, report, demo, export)  # each adds its parser(s)


def build_parser() -> Parser:
    p = Parser(
        prog="c2f-search",
        description="Search coarse-to-fine training schedules for audio spectrogram transformers "
        "(Feng et al., 'From Coarse to Fine', ICASSP 2024).",
        epilog=EPILOG_SCHEDULE,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv=None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    parser = build_parser()
    a = parser.parse_args(argv)
    if not getattr(a, "fn", None):
        parser.print_help()
        return 2
    prog = f"c2f-search {a.command}"
    on_term = _handle_sigterm()
    try:
        return a.fn(a) or 0
    except ConfigError as e:
        print(f"{prog}: error: {config_error_line(e)}", file=sys.stderr)
    except C2FError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
    except KeyboardInterrupt as e:
        print(f"{prog}: interrupted{_resume_hint(a)}", file=sys.stderr)
        return 128 + getattr(e, "signum", signal.SIGINT)
    finally:
        if on_term is not None:
            signal.signal(signal.SIGTERM, on_term)
    return 2


def _handle_sigterm():
    """SIGTERM (a cluster scheduler, a spot reclaim) stops a command as Ctrl-C does: cleanly, with the
    resume hint, exit code 143. Returns the handler it replaced."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        return None

    def term(signum, frame):
        raise Interrupted(signum)

    return signal.signal(signal.SIGTERM, term)


def _resume_hint(a) -> str:
    """How to go on after an interrupt: --resume where the folder holds something to resume."""
    if a.command == "confirm":
        folder = SearchDir(a.dir)
        state = folder.target(a.target).marker if a.target else folder.confirm_state
        try:
            unfinished = json.loads(state.read_text()).get("finished") is False
        except (OSError, ValueError, AttributeError):
            unfinished = False
        if not unfinished:
            return "; nothing was saved yet: run the same command again"
        return (
            f"; no result was written: continue with: c2f-search confirm {a.dir}"
            + (f" --target {a.target}" if a.target else "")
            + " --resume"
        )
    out = Path(getattr(a, "out", None) or "")
    marker = {
        "train": RunDir(out).config,
        "pretrain": RunDir(out).config,
        "search": SearchDir(out).settings,
        "demo": SearchDir(out).settings,
    }
    if a.command not in marker:
        return ""
    if not marker[a.command].is_file():
        return "; nothing was saved yet: run the same command again"
    return f"; continue with: c2f-search {a.command} --out {a.out} --resume"


if __name__ == "__main__":
    sys.exit(main())
