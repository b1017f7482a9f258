"""`kdrun report`: summarise finished runs, one row per setting with its seeds aggregated.

`runs` finds and groups the runs (no plotting, no rich), `render` writes the table, CSV and
Markdown, `plots` draws the figures; the dependencies run one way: plots and render use runs.
"""

from kdrun.report.render import make_report, show_report
from kdrun.report.rows import build_report

__all__ = ["build_report", "make_report", "show_report"]
