"""Analysis of mpq results on polars: summary tables, metric↔task correlations, the metric
ranking, codecs at equal rate and paired tests, machine BD-rate, plots and a self-contained HTML report. A notebook needs a few calls::

    from mpq import analysis
    df = analysis.load("out/smoke")
    analysis.summary_tables(df)["image"]
    analysis.correlations(df, n_resamples=1000, seed=0)
    analysis.metric_ranking(df)         # which metric predicts the per-sample score best
    analysis.equal_rate(df)             # codecs at equal rate, each against the best there
    analysis.compare(df)                # paired tests: every setting against the baseline
    analysis.write_report(df, "out/smoke/report")
"""

from mpq.analysis.bdrate import bd_rate, bd_rates
from mpq.analysis.correlation import correlate, correlations
from mpq.analysis.equal_rate import default_targets, equal_rate
from mpq.analysis.paired import compare, holm, mcnemar, permutation_p
from mpq.analysis.plots import metric_performance, plot_conditions, png, rate_performance, save
from mpq.analysis.ranking import metric_ranking, spearman_difference
from mpq.analysis.report import correlation_display, equal_rate_display, latex, load_runs, ranking_display, write_report
from mpq.analysis.tables import (
    conditions,
    load,
    metric_columns,
    rate_column,
    summary_tables,
    to_markdown,
)

__all__ = [
    "bd_rate", "bd_rates", "compare", "conditions", "correlate", "correlation_display", "correlations",
    "default_targets", "equal_rate", "equal_rate_display", "holm", "load", "mcnemar", "metric_columns", "metric_performance", "metric_ranking",
    "latex", "load_runs", "permutation_p", "plot_conditions", "png", "ranking_display", "rate_column", "rate_performance", "spearman_difference", "save", "summary_tables", "to_markdown", "write_report",
]
