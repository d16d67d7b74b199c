"""The engines (serial, Ray) and what they share: the plan, the stages, in-flight notes."""

import os

# Before any engine module imports Ray, which reads it at import: Ray's `uv run` hook would
# rebuild a virtualenv in every worker (under a path too long for espeak-ng's data, whose
# workers then exit); local workers already share this interpreter, and cluster jobs get
# theirs from `mpq-ray submit`'s runtime_env.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


def verbose() -> bool:
    """`mpq-ray run --verbose`: Ray's and the models' own output reaches the terminal too."""
    return os.environ.get("MPQ_VERBOSE", "") not in ("", "0")
