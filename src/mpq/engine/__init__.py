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


def starts_own_cluster(address: str | None) -> bool:
    """Whether ``ray.init(address)`` starts a new cluster on this machine, as Ray resolves an
    address it is not given (``RAY_ADDRESS``, then a cluster ``ray start`` left running here)."""
    import ray

    if ray.is_initialized():  # this process has its cluster already
        return False
    if address == "local":
        return True
    if address is not None:
        return False
    from ray._private.services import canonicalize_bootstrap_address

    try:
        return canonicalize_bootstrap_address(None) is None
    except Exception:  # a stale record of an earlier cluster: let Ray decide, as it would
        return False
