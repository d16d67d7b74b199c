"""Cluster commands answer a user's mistake or a cluster's refusal in one line, never a traceback.

The slow cases run against a real Ray head started as `ray start --head` starts by default:
a token in ~/.ray/auth_token (HOME is a temporary folder here) and RAY_AUTH_MODE unset, so
the head turns token authentication on, as a user's local head does (a head of its own: the
session's cluster runs without authentication, and Ray decides it when the head starts).
"""

import os

import pytest
import yaml
from helpers import LocalCluster, free_ports
from test_cluster import mpq

TOKEN = "0123456789abcdef0123456789abcdef"
# One photo through one JPEG setting and PSNR: the least work a submitted job can do.
TINY_JOB = {
    "name": "tiny",
    "datasets": [{"name": "skimage", "source": {"samples": "skimage"}}],
    "codecs": [{"name": "jpeg", "settings": [50]}],
    "metrics": ["psnr"],
}


def one_line_error(res) -> str:
    """The failure's message, checked to be one line with no traceback."""
    assert res.returncode == 2, (res.stdout, res.stderr)
    message = res.stderr.strip()
    assert "\n" not in message and "Traceback" not in message, res.stderr
    return message


@pytest.fixture
def tiny_job(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_JOB))
    return path


@pytest.fixture
def no_cluster(tmp_path) -> tuple[str, dict]:
    """An address where nothing listens, and an environment with no Ray settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return f"http://127.0.0.1:{free_ports(1)[0]}", {**env, "HOME": str(tmp_path)}


@pytest.mark.parametrize("command", [["status", "some-id"], ["logs", "some-id"], ["logs", "some-id", "--follow"], ["stop", "some-id"]])
def test_unreachable_address_is_one_line(no_cluster, command):
    address, env = no_cluster
    message = one_line_error(mpq(*command, "--address", address, env=env))
    assert message.startswith(f"no Ray cluster answers at {address}") and "RAY_ADDRESS" in message


def test_submit_to_an_unreachable_address_is_one_line(no_cluster, tiny_job, tmp_path):
    address, env = no_cluster
    res = mpq("submit", str(tiny_job), "--output", str(tmp_path / "out"), env={**env, "RAY_ADDRESS": address})
    assert one_line_error(res).startswith(f"no Ray cluster answers at {address}")


def test_address_that_is_not_one_is_one_line(no_cluster):
    _, env = no_cluster
    message = one_line_error(mpq("status", "some-id", "--address", "localhost:port", env=env))
    assert message.startswith("localhost:port is not a Ray dashboard address") and "http://HEAD:8265" in message


def test_run_into_an_output_that_is_a_file_is_one_line(tiny_job, tmp_path):
    (tmp_path / "taken").write_text("a file, not a folder")
    res = mpq("run", str(tiny_job), "--engine", "serial", "--no-progress", "--output", str(tmp_path / "taken"), env=dict(os.environ))
    assert "Not a directory" in one_line_error(res)


@pytest.fixture(scope="module")
def token_head(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text(TOKEN)
    c = LocalCluster()
    del c.env["RAY_AUTH_MODE"]  # as a user's shell: Ray decides, and with a token file it turns auth on
    c.env["HOME"] = str(home)
    try:
        c.start_head(cpus=1)
        yield c
    finally:
        c.close()


@pytest.mark.slow
def test_submit_to_a_default_head_with_token_auth_finds_the_token(token_head, tiny_job, tmp_path):
    out = tmp_path / "out"
    res = mpq("submit", str(tiny_job), "--address", token_head.dashboard, "--output", str(out), "--limit", "1",
              "--follow", env=token_head.env)
    assert res.returncode == 0 and "job SUCCEEDED" in res.stdout, res.stdout[-3000:] + res.stderr[-3000:]
    assert "2 rows written (0 with errors)" in res.stdout
    assert "INFO" not in res.stderr, res.stderr  # Ray's notes on the upload and the log stream
    job_id = next(line.split()[1] for line in res.stdout.splitlines() if line.startswith("submitted "))
    env = {**token_head.env, "RAY_ADDRESS": token_head.dashboard}
    stop = mpq("stop", job_id, env=env)
    assert stop.returncode == 0 and stop.stdout.strip() == f"{job_id}: already ended (SUCCEEDED); nothing to stop"


@pytest.mark.slow
@pytest.mark.parametrize("command", [["status"], ["logs"], ["logs", "--follow"], ["stop"]])
def test_unknown_job_id_is_one_line(token_head, command):
    env = {**token_head.env, "RAY_ADDRESS": token_head.dashboard}
    message = one_line_error(mpq(command[0], "mpq-nope-123", *command[1:], env=env))
    assert message.startswith(f"no job 'mpq-nope-123' on the Ray cluster at {token_head.dashboard}")


@pytest.mark.slow
def test_missing_or_wrong_token_is_one_line_with_the_fix(token_head, tiny_job, tmp_path):
    env = {**token_head.env, "HOME": str(tmp_path)}  # no ~/.ray/auth_token
    res = mpq("submit", str(tiny_job), "--address", token_head.dashboard, "--output", str(tmp_path / "o"), env=env)
    message = one_line_error(res)
    assert "requires a token and none was found" in message and "~/.ray/auth_token" in message and "RAY_AUTH_TOKEN" in message
    env["RAY_AUTH_TOKEN"] = "f" * 32
    message = one_line_error(mpq("status", "any", "--address", token_head.dashboard, env=env))
    assert "refused this machine's token" in message and "ray get-auth-token" in message


@pytest.mark.slow
def test_a_cluster_lost_while_following_a_job_is_one_line(token_head):
    """The head goes away while `logs --follow` streams a job (its dashboard's log stream cut:
    a head lost, a network cut): one line saying what was lost and how to look again, not the
    WebSocket's traceback. The module's last test: the head it kills is the module's."""
    import subprocess
    import sys

    from helpers import ROOT
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(token_head.dashboard, headers={"Authorization": f"Bearer {TOKEN}"})
    job_id = client.submit_job(entrypoint="""python -c "import time; print('working', flush=True); time.sleep(300)" """)
    env = {**token_head.env, "RAY_ADDRESS": token_head.dashboard}
    follow = subprocess.Popen([sys.executable, "-m", "mpq.cli", "logs", job_id, "--follow"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while follow.stdout.readline().strip() != "working":  # the job's log streams (after Ray's own lines)
        assert follow.poll() is None, follow.stderr.read()
    token_head.kill(token_head.head)  # the head, its dashboard with it
    stdout, stderr = follow.communicate(timeout=120)
    assert follow.returncode == 2, stdout + stderr
    message = stderr.strip()
    assert "\n" not in message and "Traceback" not in message, stderr
    assert message.startswith(f"lost the Ray cluster at {token_head.dashboard} while following {job_id}")
    assert f"mpq-ray status {job_id}" in message
