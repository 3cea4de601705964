"""`povid report DATA -o report.html`"""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape

from povid_cli.app import Verbose, command, console, make_progress, out


@command("report")
def report_cmd(
    data: Annotated[str, typer.Argument(help="The dataset folder (local path or URL).", show_default=False)],
    output: Annotated[str, typer.Option("--output", "-o", help="The HTML file to write.")] = "report.html",
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Show at most N kept pairs and N dropped rows (spread over kinds and drop reasons); the summary counts everything.")] = 200,
    thumb_size: Annotated[int, typer.Option("--thumb-size", min=32, max=2048, help="Long side of the inlined thumbnails, in pixels.")] = 256,
    no_dropped: Annotated[bool, typer.Option("--no-dropped", help="Show kept pairs only.")] = False,
    verbose: Verbose = 0,
):
    """Write a self-contained HTML page to look at the pairs: DATA's pairs side by side.

    Summary figures (items, pairs per kind, drop reasons, token cost of the API stages), then each pair:
    the clean image and the distorted one (image pairs), the prompt, chosen and rejected with the changed
    words highlighted, the scores and the drop reason. Filter by kind, kept / dropped and drop reason;
    the filters live in the URL fragment (report.html#kind=image&reason=duplicate). Images are inlined
    as small thumbnails, so the file can be mailed or attached to a PR as it is.

    Examples:

      povid report data -o report.html

      povid report data -o report.html --limit 50 --no-dropped
    """
    from povid_cli.report.job import write_report

    with make_progress() as progress:
        r = write_report(data, output, limit=limit, thumb_size=thumb_size, no_dropped=no_dropped, progress=progress)
    console.print(escape(f"report: {r.items} items, {r.pairs} pairs, {r.dropped} dropped; "
                         f"showing {r.shown} rows ({r.kib:.0f} KiB)"))
    out.print(escape(r.path))
