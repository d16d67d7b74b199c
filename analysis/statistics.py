# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # The study's questions, with statistics
#
# Which quality metric predicts a model's per-sample score best, and which codec hurts the
# model least at equal rate, each with bootstrap 95 % intervals over sample ids and paired
# tests on the same samples (McNemar's exact test for accuracy, a paired bootstrap of the
# split-level score otherwise), p-values Holm-adjusted. `MPQ_RESULTS` names the job's
# output folder, `MPQ_RESAMPLES` the number of bootstrap resamples, `MPQ_TARGETS` the
# target rates (comma-separated, bpp for images and kbps for audio; default three per
# dataset).

# %%
import os

import polars as pl

from mpq import analysis

results = os.environ.get("MPQ_RESULTS", "out/smoke")
resamples = int(os.environ.get("MPQ_RESAMPLES", "1000"))
# rows of components with random weights (pipeline checks) stay out of conclusions unless asked for
flagged = os.environ.get("MPQ_INCLUDE_FLAGGED") == "1"
targets = [float(t) for t in os.environ["MPQ_TARGETS"].split(",")] if os.environ.get("MPQ_TARGETS") else None
df = analysis.load(results)

# %% [markdown]
# ## Metric ranking
#
# Per dataset and task, the quality metrics by |Spearman| with the per-sample score; the
# best is tested against the second (paired bootstrap of the |rho| difference).

# %%
ranking = analysis.metric_ranking(df, n_resamples=resamples, seed=0, include_flagged=flagged)
print(analysis.to_markdown(analysis.ranking_display(ranking)))

# %% [markdown]
# ## At equal rate
#
# Each codec at each target rate (its setting of highest mean rate not above the target,
# or the rows' own target), its task score, and its difference from the best codec there.

# %%
at_rate = analysis.equal_rate(df, targets=targets, n_resamples=resamples, seed=0, include_flagged=flagged)
print(analysis.to_markdown(analysis.equal_rate_display(at_rate)))

# %% [markdown]
# The codecs significantly worse than the best at their rate (Holm-adjusted p < 0.05).

# %%
worse = at_rate.filter(pl.col("p_holm") < 0.05).select("dataset", "task", "score_name", "target", "codec", "difference", "p_holm")
worse

# %% [markdown]
# ## Every codec setting against the uncompressed baseline
#
# Does a setting change the task score, on the same samples?

# %%
vs_baseline = analysis.compare(df, n_resamples=resamples, seed=0, include_flagged=flagged)
vs_baseline.select("dataset", "task", "score_name", "b", "n", "difference", "difference_low", "difference_high", "test", "p_holm")
