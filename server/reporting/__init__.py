"""`nbo report`: campaign KPIs and lift against control groups from the decision, outcome and
conversion logs, as terminal tables, CSV, JSON or one self-contained HTML file (docs/report.md).

Offline code: it reads the logs and the catalog versions, never the hot path's state, and
nothing on the hot path imports it.
"""

from server.reporting.build import build_report
from server.reporting.lift import Thresholds
from server.reporting.model import Report

__all__ = ["Report", "Thresholds", "build_report"]
