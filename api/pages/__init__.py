"""The pages the API serves: the report of a finished job as one self-contained HTML page.

Jinja2 templates (``templates/``, autoescaped) and a static stylesheet (``static/report.css``, inlined into
the page): everything is inline (CSS, SVG charts, PNG overlays as ``data:`` URIs); the page runs no script
and makes no request, so it opens offline, can be mailed or attached to a CI run, and passes a strict
Content-Security-Policy (``CSP``).
"""

from api.pages.formatting import fmt
from api.pages.report import CSP, render_report_html

__all__ = ["CSP", "fmt", "render_report_html"]
