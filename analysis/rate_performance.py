# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # Rate–performance and machine BD-rate
#
# Task score against rate per dataset (the study's Figure 2), and the Bjøntegaard delta
# rate on bits vs task score between codecs with at least four settings, with a bootstrap
# 95 % interval over samples. `MPQ_RESULTS` names the job's output folder; figures are
# saved under `MPQ_FIGURES` (default `out/figures`); `MPQ_RESAMPLES` is the number of
# bootstrap resamples.

# %%
import os
from pathlib import Path

import polars as pl

from mpq import analysis

results = os.environ.get("MPQ_RESULTS", "out/smoke")
figures = Path(os.environ.get("MPQ_FIGURES", "out/figures"))
resamples = int(os.environ.get("MPQ_RESAMPLES", "1000"))
# rows of components with random weights (pipeline checks) stay out of conclusions unless asked for
flagged = os.environ.get("MPQ_INCLUDE_FLAGGED") == "1"
figures.mkdir(parents=True, exist_ok=True)
df = analysis.load(results)
conds = analysis.plot_conditions(df, n_resamples=resamples, seed=0, include_flagged=flagged)  # with bootstrap intervals

# %%
for dataset, task, score_name in conds.select("dataset", "task", "score_name").unique(maintain_order=True).iter_rows():
    rate = analysis.rate_column(df.filter(pl.col("dataset") == dataset))
    fig = analysis.rate_performance(conds, dataset, task, score_name, rate)
    fig.savefig(figures / f"rate_{dataset}_{task}_{score_name}.png")
print(sorted(p.name for p in figures.glob("rate_*.png")))

# %% [markdown]
# BD-rate of each codec pair (negative: the test codec needs fewer bits for the same score).
# Each curve is first fitted monotone in bits (isotonic regression); a pair whose score
# ranges overlap over less than half the narrower range has no value, and `note` says why.

# %%
bd = analysis.bd_rates(df, min_settings=4, n_resamples=resamples, seed=0, include_flagged=flagged)
print(analysis.to_markdown(bd))

# %% [markdown]
# The same computation on any two curves of (bits, score) points:

# %%
analysis.bd_rate([1e4, 2e4, 4e4, 8e4], [0.5, 0.7, 0.8, 0.85], [0.8e4, 1.6e4, 3.2e4, 6.4e4], [0.5, 0.7, 0.8, 0.85])
