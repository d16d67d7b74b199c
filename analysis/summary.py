# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # Summary tables
#
# The study's Tables 3 and 4 (metric × dataset × codec setting, baseline first) from a
# job's Parquet results. `MPQ_RESULTS` names the job's output folder (default `out/smoke`).

# %%
import os

from mpq import analysis

results = os.environ.get("MPQ_RESULTS", "out/smoke")
df = analysis.load(results)
print(f"{df.height} rows, {df['error'].is_not_null().sum()} with errors, datasets: {sorted(df['dataset'].unique())}")

# %% [markdown]
# Per condition (dataset, task, codec, setting): sample count, mean bits, rate and
# metrics, and each split-level task score from the task's own `aggregate`.

# %%
conds = analysis.conditions(df)
conds

# %% [markdown]
# One table per modality, in the study's layout.

# %%
tables = analysis.summary_tables(df)
for modality, table in tables.items():
    print(f"## {modality}\n")
    print(analysis.to_markdown(table))
