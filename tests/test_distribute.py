"""--strategy: mirrored replicas give the update of the global batch, multi-worker runs stay in lockstep."""

import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from conftest import GYM, ROOT, TINY, run_dreamer

import configs

SMALL = [*TINY, "--batch_size", "4"]

# The mirrored tests split the CPU into logical devices: GPUs hidden, where there are any.
CPU_ONLY = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1"}


def cluster_env(ports, index):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    return {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}


@pytest.mark.parametrize(
    "tf_config, message",
    [
        (None, "TF_CONFIG environment variable is not set"),
        ("{'cluster': ", "not valid JSON"),
        ('{"task": {"type": "worker", "index": 0}}', 'no "cluster"'),
        ('{"cluster": {"worker": ["127.0.0.1:1"]}}', 'no "task"'),
        ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 1}}', "index 1 is unknown"),
        ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "ps", "index": 0}}', "type 'ps' is not a job"),
        ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}', "host:port"),
    ],
)
def test_bad_tf_config_is_refused(tf_config, message, monkeypatch, capsys, tmp_path):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(SystemExit) as exit:
        configs.parse_config(["--logdir", str(tmp_path), *TINY, "--strategy", "multi_worker"])
    assert exit.value.code == 2
    error = capsys.readouterr().err
    assert message in error
    assert 'TF_CONFIG=\'{"cluster"' in error  # Says what a good one looks like.
    assert not list(tmp_path.iterdir())


def test_global_batch_must_split_evenly(tmp_path):
    flags = [*TINY, "--strategy", "mirrored", "--replicas", "2"]
    result = run_dreamer(tmp_path / "run", *flags, check=False, env=CPU_ONLY)
    assert result.returncode == 2
    assert "global batch of 3 does not split evenly across 2 replicas" in result.stdout
    assert not (tmp_path / "run").exists()


VARIANTS = {
    "dreamer": [],
    "no_value_reward_only": ["--configs", "debug", "no_value", "reward_only"],
    "planet": ["--configs", "debug", "planet"],
    "contrastive": ["--configs", "debug", "contrastive"],
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_mirrored_step_equals_single_device_step(tmp_path, variant):
    """Global batch 4 on 2 logical CPU devices vs on one: the same update, with gradient clipping active
    (the model's gradient norm is far above 1) and weight decay on; also without a value model, from rewards, and
    under PlaNet's planner. The contrastive bound takes its negatives from each replica's share, so there only the
    other losses agree."""
    flags = [*SMALL, *VARIANTS[variant], "--free_nats", "0", "--grad_clip", "1", "--weight_decay", "1e-4"]
    command = [sys.executable, str(ROOT / "tests" / "distributed_step.py"), str(tmp_path), *flags]
    output = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=CPU_ONLY)
    assert output.returncode == 0, output.stderr[-3000:]
    result = json.loads(output.stdout.strip().splitlines()[-1])
    metrics, other = result["metrics"], result["other_metrics"]
    assert result["replica_batches"] == [2, 2]
    assert metrics["model_grad_norm"] > 1.2  # Above --grad_clip 1: clipping shapes this step.
    assert result["change"] > 1e-3  # The step moved the weights...
    if variant == "contrastive":
        assert other["cpc_loss"] != pytest.approx(metrics["cpc_loss"], rel=1e-3)  # Fewer negatives per replica.
        for key in ("image_loss", "reward_loss", "div"):
            assert other[key] == pytest.approx(metrics[key], rel=1e-5)
        return
    assert result["difference"] < 1e-5  # ...the same way on both.
    expected = {"dreamer": ("model_loss", "div", "actor_loss", "value_loss", "model_grad_norm")}
    for key in expected.get(variant, ("model_loss", "div", "model_grad_norm")):
        assert other[key] == pytest.approx(metrics[key], rel=1e-5)
    assert ("actor_loss" in metrics) == (variant != "planet")


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_cluster(logdir, cwd, *flags, stop_at=None, signals=(signal.SIGTERM, signal.SIGINT), chief_code=0):
    """Chief (worker 0) and worker 1 of --strategy multi_worker on loopback; returns both outputs. With `stop_at`,
    the chief gets `signals` (by default SIGTERM, then SIGINT: stop at once) when it prints that line."""
    ports = free_ports(2)
    command = [sys.executable, str(ROOT / "dreamer.py"), "--logdir", str(logdir), *flags]
    command += ["--strategy", "multi_worker"]
    cwd.mkdir(exist_ok=True)
    popen = lambda index, cwd: subprocess.Popen(
        command, cwd=cwd, env=cluster_env(ports, index), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    worker, chief = popen(1, cwd), popen(0, ROOT)
    try:
        lines = []
        for line in chief.stdout:
            lines.append(line)
            if stop_at and line.startswith(stop_at):
                for signum in signals:  # Two of one kind may arrive as one: the default sends two numbers.
                    chief.send_signal(signum)
        chief_out = "".join(lines)
        chief.wait(timeout=600)
        worker_out = worker.communicate(timeout=120)[0]
    finally:
        worker.kill()
        chief.kill()
    assert chief.returncode == chief_code, chief_out[-5000:]
    assert worker.returncode == 0, worker_out[-3000:]
    return chief_out, worker_out


def digest(output, who):
    match = re.search(rf"{who}.*weights sha256 ([0-9a-f]+)", output)
    assert match, output[-3000:]
    return match.group(1)


def crashed(chief, worker):
    """Whether TensorFlow reported a crashed cluster member before the final handshake of the run. (Rarely, its
    coordination service logs one at process teardown after both left together with the same weights.)"""
    until = lambda output, line: output[: output.find(line)] if line in output else output
    return "crashed" in until(chief, "Chief: stopped the other workers") + until(worker, "the chief stopped after")


def test_multi_worker_trains_in_lockstep_and_only_the_chief_writes(tmp_path):
    logdir, cwd = tmp_path / "shared" / "run", tmp_path / "worker_cwd"
    chief, worker = run_cluster(logdir, cwd, *SMALL, "--steps", "800")
    assert "Strategy multi_worker: 2 replicas" in chief
    assert "the chief stopped after 7 train steps together" in worker  # Pretrain 3, then 2 at 600 and 800 steps.
    assert digest(chief, "Chief") == digest(worker, "Worker")
    assert not crashed(chief, worker)  # They leave together.
    # Only the chief wrote: one collector's episodes, one event file, each log step once.
    assert len(list((logdir / "episodes").glob("*.npz"))) == 4
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 1
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    tests = [r["step"] for r in rows if "test/return" in r]
    assert tests == sorted(set(tests))
    assert not list(cwd.iterdir())
    assert "Saved checkpoint" not in worker

    # Restarted, the worker rejoins from the chief's latest checkpoint. SIGTERM and SIGINT to the chief in the middle of
    # a train burst: it finishes the step in hand, checkpoints, releases the worker, and they still agree.
    chief, worker = run_cluster(
        logdir, cwd, *SMALL, "--steps", "1e6", "--train_steps", "50", stop_at="Training for 50 steps."
    )
    assert f"Loaded checkpoint {logdir}/checkpoints/ckpt-800" in worker
    assert "Interrupted: saving a checkpoint" in chief
    steps = int(re.search(r"the chief stopped after (\d+) train steps together", worker).group(1))
    assert steps < 50
    assert digest(chief, "Chief") == digest(worker, "Worker")
    assert not crashed(chief, worker)


def test_multi_worker_chief_stopped_in_its_prefill_stops_the_workers(tmp_path):
    """The other workers wait for the chief's prefill; a chief stopped in it, or failing before it, tells them, and
    they stop too."""
    logdir, cwd = tmp_path / "shared" / "run", tmp_path / "worker_cwd"
    chief, worker = run_cluster(logdir, cwd, *SMALL, "--steps", "800", stop_at="Prefill", signals=[signal.SIGTERM])
    assert "Stopped in the prefill at env step" in chief
    assert "the chief stopped before training" in worker
    assert not list(cwd.iterdir()) and not (logdir / "checkpoints").exists()

    with open(logdir / "lock", "w") as lock:  # Another training run holds the logdir: the chief exits 2.
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        chief, worker = run_cluster(logdir, cwd, *SMALL, "--steps", "800", chief_code=2)
    assert "is in use by a training run" in chief
    assert "the chief stopped before training" in worker


def test_mirrored_run_trains_and_resumes_on_one_device(tmp_path):
    """A real mirrored run (2 logical CPUs) logs, writes open-loop videos and a checkpoint that a single-device
    run resumes from."""
    logdir, env = tmp_path / "run", {**CPU_ONLY, "PYTHONPATH": str(ROOT / "tests")}
    flags = [*GYM, "--batch_size", "4"]
    first = run_dreamer(logdir, *flags, "--steps", "160", "--strategy", "mirrored", "--replicas", "2", env=env).stdout
    assert "Strategy mirrored: 2 replicas" in first and "2 sequences each" in first
    assert (logdir / "checkpoints" / "ckpt-160.index").exists()
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    assert any("model_loss" in r for r in rows)
    second = run_dreamer(logdir, *flags, "--steps", "240", env=env).stdout
    assert f"Loaded checkpoint {logdir}/checkpoints/ckpt-160" in second
    assert (logdir / "checkpoints" / "ckpt-240.index").exists()
