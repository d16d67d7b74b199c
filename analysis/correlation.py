# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # Do quality metrics predict task performance?
#
# Pearson, Spearman and Kendall coefficients between each quality metric (and the rate)
# and each task score, across conditions (one point per codec setting) and across samples,
# with bootstrap 95 % intervals. `MPQ_RESULTS` names the job's output folder,
# `MPQ_RESAMPLES` the number of bootstrap resamples.

# %%
import os

import polars as pl

from mpq import analysis

results = os.environ.get("MPQ_RESULTS", "out/smoke")
resamples = int(os.environ.get("MPQ_RESAMPLES", "1000"))
# rows of components with random weights (pipeline checks) stay out of conclusions unless asked for
flagged = os.environ.get("MPQ_INCLUDE_FLAGGED") == "1"
df = analysis.load(results)

# %%
corr = analysis.correlations(df, n_resamples=resamples, seed=0, include_flagged=flagged)
print(analysis.to_markdown(analysis.correlation_display(corr)))

# %% [markdown]
# The metric that tracks each task best across conditions (largest |Spearman|).

# %%
best = (
    corr.filter((pl.col("level") == "conditions") & pl.col("spearman").is_not_nan())
    .sort(pl.col("spearman").abs(), descending=True)
    .group_by("dataset", "task", "score_name", maintain_order=True)
    .first()
    .select("dataset", "task", "score_name", "metric", "spearman", "spearman_low", "spearman_high")
)
best

# %% [markdown]
# Task score against each metric, one line per codec over its settings, with bootstrap intervals.

# %%
conds = analysis.plot_conditions(df, n_resamples=resamples, seed=0, include_flagged=flagged)
metrics = analysis.metric_columns(df)
figures = {
    (*key, metric): analysis.metric_performance(conds, *key, metric)
    for key in conds.select("dataset", "task", "score_name").unique(maintain_order=True).iter_rows()
    for metric in metrics
}
print(f"{len(figures)} metric–performance figure(s)")
