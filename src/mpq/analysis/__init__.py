"""Analysis of mpq results on polars: summary tables, metric↔task correlations, machine
BD-rate, plots and a self-contained HTML report. A notebook needs a few calls::

    from mpq import analysis
    df = analysis.load("out/smoke")
    analysis.summary_tables(df)["image"]
    analysis.correlations(df, n_resamples=1000, seed=0)
    analysis.write_report(df, "out/smoke/report")
"""

from mpq.analysis.bdrate import bd_rate, bd_rates
from mpq.analysis.correlation import correlate, correlations
from mpq.analysis.plots import metric_performance, png, rate_performance
from mpq.analysis.report import correlation_display, write_report
from mpq.analysis.tables import (
    conditions,
    load,
    metric_columns,
    rate_column,
    summary_tables,
    to_markdown,
)

__all__ = [
    "bd_rate", "bd_rates", "conditions", "correlate", "correlation_display", "correlations", "load",
    "metric_columns", "metric_performance", "png", "rate_column", "rate_performance", "summary_tables",
    "to_markdown", "write_report",
]
