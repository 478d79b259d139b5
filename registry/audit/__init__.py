"""The compliance report (`seal audit`): what changed this model, when, on what data, was it checked,
who moved it. This package gathers the public names:

- :mod:`.report`: the report as data (``audit_report``, following ``AUDIT_SCHEMA``), the drift
  table, and its output (``render``, ``write_report``, and the checks of where it may be written);
- :mod:`.rendering`: html and Markdown through the Jinja2 templates in ``templates/``;
- :mod:`.figures`: the drift plot (matplotlib) and the lineage graph (graphviz, mermaid).

:mod:`.rendering` and :mod:`.figures` are imported only when a report is rendered as html or md,
so ``seal audit --format json`` and ``seal audit --drift`` never load them. (The module is named
``rendering``, not ``render``: importing a submodule binds its name on this package, which would
replace the function ``render`` below.)
"""

from __future__ import annotations

from .report import (AUDIT_SCHEMA, FORMATS, PNG_MARK, REPORT_MARKS, SCHEMA_ID, SELF_EDIT_HEAD, audit_report,
                     check_output, check_report_target, drift_image_path, drift_lines, render, write_report)

__all__ = [
    "audit_report", "render", "write_report", "drift_lines", "drift_image_path", "check_output",
    "check_report_target", "AUDIT_SCHEMA", "SCHEMA_ID", "FORMATS", "SELF_EDIT_HEAD", "PNG_MARK", "REPORT_MARKS",
]
