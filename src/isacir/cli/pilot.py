"""``isacir pilot``: reports for people who will not open the dashboard."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import IsacirError
from ._app import FEEDBACK_DB_HELP, JSON_ALWAYS_HELP, app, emit_json, err

pilot_app = typer.Typer(help="Pilot metrics from operator verdicts.", no_args_is_help=True)
app.add_typer(pilot_app, name="pilot")


@pilot_app.command("report")
def report_cmd(
    feedback_db: str = typer.Option(..., help=FEEDBACK_DB_HELP),
    out_file: Path = typer.Option(..., "--out", help="The HTML file to write (self-contained: charts inline)."),
    csv_dir: Optional[Path] = typer.Option(None, "--csv", help="Also write a CSV of every table into this folder."),
    since: Optional[str] = typer.Option(None, "--from", help="ISO date or time (UTC), or unix seconds."),
    until: Optional[str] = typer.Option(None, "--to", help="ISO date or time (UTC), or unix seconds; exclusive."),
    as_json: bool = typer.Option(False, "--json", help=JSON_ALWAYS_HELP),
) -> None:
    """One HTML file with the pilot's charts and tables, plus CSVs."""
    from ..pilot import parse_time
    from ..pilot.report import write_report
    from .feedback import open_feedback_db

    store = open_feedback_db(feedback_db)
    try:
        start, end = parse_time(since), parse_time(until)
    except ValueError as exc:
        raise IsacirError(f"--from/--to: {exc}") from None
    result = write_report(store.queries(start, end), out_file, csv_dir)
    err.print(f"wrote {out_file} ({result['bytes']:,} bytes)" + (f" and CSVs in {csv_dir}" if csv_dir else ""))
    emit_json(result)
