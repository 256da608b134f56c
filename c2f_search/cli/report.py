"""``report``: one self-contained HTML page of a search."""

from __future__ import annotations

from pathlib import Path

from ..errors import C2FError
from .args import out_path


def cmd_report(a) -> int:
    from ..analysis.report import write_report

    if a.out is not None and Path(a.out).suffix != ".html":
        raise C2FError(f"{a.out}: use a file name ending in .html")
    print(f"wrote {write_report(a.dir, a.out)}")
    return 0


def add_parser(sub) -> None:
    r = sub.add_parser(
        "report",
        help="one self-contained HTML page of a search",
        description="Write DIR/report.html: the front plot, every trial's learning curve coloured "
        "by C with the phase transitions marked, the Table 2/3 tables, the confirm "
        "table when there is one, and the search settings. It opens from disk in any "
        "browser, with no server.",
    )
    r.add_argument("dir", metavar="DIR", help="the --out folder of a search")
    r.add_argument("--out", default=None, type=out_path, help="HTML file (default DIR/report.html)")
    r.set_defaults(fn=cmd_report)
