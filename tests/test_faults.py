"""Fault injection: what a run keeps when things go wrong (README "What survives a crash").

Signals to a real train.py (mid-epoch SIGTERM / SIGINT, then an exact resume; a signal during an evaluation),
a file-size limit standing for a full disk, a folder that cannot be written, temporary files of killed writes,
resume keys honoured or refused, two processes racing for one folder and a lock left by a dead process,
checkpoints damaged on disk, a DataLoader worker killed by SIGKILL. A corrupt gallery image: tests/
test_evaluation_faults.py (during evaluation) and tests/test_image_check.py (before the first epoch).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from config import UserError, load_config
from engine.reporting.run_files import DiskWriteError, atomic_write
from engine.run.cli import killed_worker_message
from engine.run.run_lock import FolderInUseError
from engine.training import RunInterrupted, train
from modeling.state_checksum import ChecksumMismatchError, verify_checksum, with_checksum

ROOT = Path(__file__).resolve().parents[1]


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def last_per_epoch(path: Path, drop=("eval_seconds", "seconds_per_batch")) -> dict[int, dict]:
    """The last record of each epoch (a resumed run may repeat one), without the timing fields."""
    return {r["epoch"]: {k: v for k, v in r.items() if k not in drop} for r in read_records(path)}


def temporary_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith("tmp")]


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    for entry in ("model", "loss"):
        assert first[entry].keys() == second[entry].keys()
        for key in first[entry]:
            assert torch.equal(first[entry][key], second[entry][key]), f"{entry}.{key} differs"


def train_command(opts: list[str], *extra: str) -> list[str]:
    return [sys.executable, "train.py", *opts, *extra]


def wait_for(path: Path, text: str, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise AssertionError(f"train.py ended ({process.returncode}) before {text!r} appeared")
        time.sleep(0.02)
    raise AssertionError(f"{text!r} did not appear in {path}")


# ------------------------------------------------------------------------------------------------ signals

# 6 batches per epoch (6 identities x 2 groups of 2 images, 2 identities per batch): a signal sent when the
# first batch is logged arrives well before the epoch's last one
SIGNAL_RUN = {
    "SOLVER.IMS_PER_BATCH": "4",
    "SOLVER.MAX_EPOCHS": "3",
    "SOLVER.EVAL_PERIOD": "1",
    "SOLVER.CHECKPOINT_PERIOD": "3",
    "LOG.PLOTS": "no",
}


@pytest.mark.e2e
@pytest.mark.parametrize(("signum", "code", "workers"), [(signal.SIGTERM, 143, "0"), (signal.SIGINT, 130, "2")])
def test_a_signal_mid_epoch_checkpoints_and_the_resumed_run_ends_as_the_uninterrupted_one(
    tiny_opts, market_root, tmp_path, signum, code, workers
):
    settings = {**SIGNAL_RUN, "DATALOADER.NUM_WORKERS": workers}
    full, part = tmp_path / "full", tmp_path / "part"
    reference = subprocess.run(
        train_command(tiny_opts(market_root, full, **settings)), cwd=ROOT, capture_output=True, text=True, timeout=400
    )
    assert reference.returncode == 0, reference.stderr[-3000:]

    opts = tiny_opts(market_root, part, **settings)
    # its own process group, which receives the signal as a terminal's Ctrl-C or a scheduler's SIGTERM reaches
    # every process of a job: the DataLoader workers too
    process = subprocess.Popen(
        train_command(opts),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    wait_for(part / "log.txt", "Epoch[2] Iteration[1/6]", process)
    os.killpg(process.pid, signum)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == code, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: stopped by {signal.Signals(signum).name} at epoch 2")
    assert f"--resume {part}" in last
    mid_epoch = sorted((part / "checkpoints").glob("checkpoint_2_iter*.pt"))
    assert len(mid_epoch) == 1, sorted(p.name for p in (part / "checkpoints").iterdir())
    assert not temporary_files(part) and not (part / "run.lock").exists()

    resumed = subprocess.run(
        train_command(opts, "--resume", str(part)), cwd=ROOT, capture_output=True, text=True, timeout=400
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(full / "checkpoints/checkpoint_3.pt", part / "checkpoints/checkpoint_3.pt")
    assert last_per_epoch(part / "metrics.jsonl") == last_per_epoch(full / "metrics.jsonl")
    # the running averages came back with the checkpoint: the epoch line of the interrupted epoch is the same
    assert last_per_epoch(part / "train_metrics.jsonl") == last_per_epoch(full / "train_metrics.jsonl")
    history = sorted(p.name for p in (part / "config_history").iterdir())
    assert history[0].startswith("0001_from_epoch_0") and history[1].startswith("0002_from_epoch_2_batch_")


@pytest.mark.e2e
def test_a_signal_during_an_evaluation_keeps_the_epoch_and_the_resume_evaluates_it(
    tiny_opts, market_root, tmp_path, monkeypatch
):
    from engine.evaluation.dataset_evaluation import DatasetEvaluation

    settings = {**SIGNAL_RUN, "SOLVER.MAX_EPOCHS": "2"}
    full, part = tmp_path / "full", tmp_path / "part"
    train(load_config(None, tiny_opts(market_root, full, **settings)))

    original = DatasetEvaluation.run

    def signalled_run(self):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the evaluation of epoch 1 extracts features
        return original(self)

    monkeypatch.setattr(DatasetEvaluation, "run", signalled_run)
    with pytest.raises(RunInterrupted, match="stopped by SIGTERM at epoch 1") as stopped:
        train(load_config(None, tiny_opts(market_root, part, **settings)))
    assert stopped.value.exit_code == 143
    assert (part / "checkpoints/checkpoint_1.pt").is_file()  # written on the stop: not a checkpoint epoch
    assert not (part / "metrics.jsonl").exists()
    monkeypatch.setattr(DatasetEvaluation, "run", original)

    train(load_config(None, tiny_opts(market_root, part, **settings)), resume=str(part))
    assert "whose evaluation the interrupted run did not complete" in (part / "log.txt").read_text()
    assert last_per_epoch(part / "metrics.jsonl") == last_per_epoch(full / "metrics.jsonl")
    assert_same_weights(full / "checkpoints/checkpoint_2.pt", part / "checkpoints/checkpoint_2.pt")


def test_a_signal_during_a_write_lets_the_write_finish(tmp_path):
    from engine.handlers.graceful_stop import SignalWatch

    watch = SignalWatch().install()
    try:

        def write(handle):
            handle.write(b"first half ")
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of a checkpoint write
            handle.write(b"second half")

        atomic_write(tmp_path / "checkpoint_1.pt", write)
    finally:
        watch.uninstall()
    assert (tmp_path / "checkpoint_1.pt").read_bytes() == b"first half second half"
    assert watch.received == signal.SIGINT and not temporary_files(tmp_path)


# --------------------------------------------------------------------------------- disks that refuse writes

LIMITED = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, like a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.mark.e2e
def test_a_full_disk_ends_in_one_line_with_earlier_checkpoints_intact(tiny_opts, market_root, tmp_path):
    out = tmp_path / "run"
    settings = {"SOLVER.MAX_EPOCHS": "1", "SOLVER.CHECKPOINT_PERIOD": "1", "SOLVER.EVAL_PERIOD": "5"}
    train(load_config(None, tiny_opts(market_root, out, **settings)))
    first = out / "checkpoints/checkpoint_1.pt"
    before = first.read_bytes()

    opts = tiny_opts(market_root, out, **{**settings, "SOLVER.MAX_EPOCHS": "2"})
    script = LIMITED.format(limit=2**20)  # 1 MB: the logs fit, a checkpoint does not
    proc = subprocess.run(
        [sys.executable, "-c", script, *opts, "--resume", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "cannot write" in lines[0] and "checkpoint_2.pt" in lines[0] and "file too large" in lines[0]
    assert not temporary_files(out)
    assert first.read_bytes() == before and verify_checksum(torch.load(first, weights_only=True))


def test_a_refused_write_names_the_file_and_the_reason_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    # torch.save reports a failed write as a RuntimeError without errno: the cause is recovered
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(DiskWriteError, match=r"cannot write .*big\.pt: file too large"):
            atomic_write(tmp_path / "big.pt", lambda handle: torch.save(torch.zeros(100_000), handle))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert not list(tmp_path.iterdir())

    for code, reason in ((errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"), (errno.EACCES, "permission")):

        def refuse(handle, code=code):
            raise OSError(code, os.strerror(code))

        with pytest.raises(DiskWriteError, match=f"cannot write .*config.yaml: {reason}"):
            atomic_write(tmp_path / "config.yaml", refuse)
    assert not list(tmp_path.iterdir())

    def no_permission(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", no_permission)
    with pytest.raises(DiskWriteError, match="permission denied"):
        atomic_write(tmp_path / "best.pt", lambda handle: None)


@pytest.mark.e2e
def test_an_output_dir_that_cannot_be_created_is_one_line(tiny_opts, market_root, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    proc = subprocess.run(
        train_command(tiny_opts(market_root, blocker / "run")), cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write" in lines[0] and "a_file" in lines[0], proc.stderr


@pytest.mark.e2e
def test_temporary_files_of_killed_writes_are_removed_when_a_run_resumes(tiny_opts, market_root, tmp_path):
    out = tmp_path / "run"
    settings = {"SOLVER.MAX_EPOCHS": "1", "SOLVER.CHECKPOINT_PERIOD": "1", "SOLVER.EVAL_PERIOD": "5"}
    train(load_config(None, tiny_opts(market_root, out, **settings)))
    stale = [out / "checkpoints/tmpab12cd34", out / "checkpoints/.checkpoint_2.pt.x1y2z3.tmp", out / ".best.pt.q9.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 1000)
    kept = out / ".test_config.yaml.k3.tmp"  # test.py may be writing it into the folder right now
    kept.write_bytes(b"")
    train(load_config(None, tiny_opts(market_root, out, **{**settings, "SOLVER.MAX_EPOCHS": "2"})), resume=str(out))
    assert not any(p.exists() for p in stale) and kept.exists()
    assert "Removed 3 temporary file(s)" in (out / "log.txt").read_text()


# ------------------------------------------------------------------------------------------------ resume keys


@pytest.fixture(scope="module")
def one_epoch_run(tiny_opts, market_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("keys") / "run"
    settings = {"SOLVER.MAX_EPOCHS": "1", "SOLVER.CHECKPOINT_PERIOD": "1", "SOLVER.EVAL_PERIOD": "5"}
    train(load_config(None, tiny_opts(market_root, out, **settings)))
    return out, settings


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("key", "value"),
    [("SEED", "7"), ("MODEL.NAME", "resnet34"), ("SOLVER.IMS_PER_BATCH", "12"), ("LOSS.MINER", "MultiSimilarityMiner")],
)
def test_a_resume_that_changes_the_model_data_or_loss_is_refused_and_leaves_the_folder(
    tiny_opts, market_root, one_epoch_run, key, value
):
    out, settings = one_epoch_run
    config_before = (out / "config.yaml").read_bytes()
    history_before = sorted((out / "config_history").iterdir())
    opts = tiny_opts(market_root, out, **{**settings, "SOLVER.MAX_EPOCHS": "2", key: value})
    with pytest.raises(UserError, match=f"cannot change {key} ") as refused:
        train(load_config(None, opts), resume=str(out))
    assert "\n" not in str(refused.value)
    assert (out / "config.yaml").read_bytes() == config_before
    assert sorted((out / "config_history").iterdir()) == history_before


@pytest.mark.e2e
def test_a_refused_resume_of_a_finished_run_leaves_config_yaml(tiny_opts, market_root, one_epoch_run):
    out, settings = one_epoch_run
    before = (out / "config.yaml").read_bytes()
    with pytest.raises(UserError, match="already finished epoch 1"):
        train(load_config(None, tiny_opts(market_root, out, **{**settings, "SOLVER.BASE_LR": "0.1"})), resume=str(out))
    assert (out / "config.yaml").read_bytes() == before


@pytest.mark.e2e
def test_a_resume_honours_a_new_learning_rate_and_schedule(tiny_opts, market_root, one_epoch_run, tmp_path):
    source, settings = one_epoch_run
    out = tmp_path / "continued"
    opts = tiny_opts(
        market_root,
        out,
        **{
            **settings,
            "SOLVER.MAX_EPOCHS": "3",
            "SOLVER.BASE_LR": "1e-5",
            "SOLVER.STEPS": "(2,)",
            "SOLVER.GAMMA": "0.5",
        },
    )
    train(load_config(None, opts), resume=str(source / "checkpoints/checkpoint_1.pt"))
    records = last_per_epoch(out / "train_metrics.jsonl")
    # epoch e (1-based) trains at BASE_LR * GAMMA ** #{steps <= e - 1}; warm-up (1 epoch) is over
    assert records[2]["lr"]["backbone"] == pytest.approx(1e-5)
    assert records[3]["lr"]["backbone"] == pytest.approx(0.5e-5)
    log = (out / "log.txt").read_text()
    assert "Keys changed on resume, honoured" in log and "SOLVER.BASE_LR" in log and "SOLVER.GAMMA" in log
    assert load_config(out / "config.yaml", []).SOLVER.BASE_LR == pytest.approx(1e-5)
    (entry,) = sorted((out / "config_history").iterdir())
    assert entry.name == "0001_from_epoch_1.yaml"
    assert "# changed on resume: SOLVER.BASE_LR 0.00035 -> 1e-05" in entry.read_text()


# ------------------------------------------------------------------------------------------ one run per folder


@pytest.mark.e2e
def test_two_runs_racing_for_one_folder_one_trains_one_is_refused(tiny_opts, market_root, tmp_path):
    out = tmp_path / "run"
    opts = tiny_opts(market_root, out, **{"SOLVER.MAX_EPOCHS": "2", "SOLVER.EVAL_PERIOD": "5"})
    racers = [
        subprocess.Popen(train_command(opts), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=400), p.stderr.read()) for p in racers]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2).strip().splitlines()
    assert len(refused) == 1 and "is in use by process" in refused[0] and "run.lock" in refused[0]
    assert not (out / "run.lock").exists()


def test_a_folder_locked_by_a_live_process_is_refused(tiny_opts, market_root, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with open(out / "run.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}))
        held.flush()
        with pytest.raises(FolderInUseError, match=f"in use by process {os.getpid()} on {socket.gethostname()}"):
            train(load_config(None, tiny_opts(market_root, out)))
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())


@pytest.mark.e2e
def test_a_lock_left_by_a_dead_process_is_taken_over(tiny_opts, market_root, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / "run.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0}))
    train(load_config(None, tiny_opts(market_root, out, **{"SOLVER.MAX_EPOCHS": "1", "SOLVER.EVAL_PERIOD": "5"})))
    assert f"took over the lock of process {dead.pid}" in (out / "log.txt").read_text()
    assert not (out / "run.lock").exists()


# ------------------------------------------------------------------------------------------ damaged checkpoints


def test_the_checksum_covers_every_tensor_and_value():
    content = with_checksum({"model": {"w": torch.arange(6.0).view(2, 3)}, "trainer": {"iteration": 12}})
    assert verify_checksum(content)
    for damage in (
        lambda c: c["model"]["w"].view(-1)[4].add_(2**-20),
        lambda c: c["trainer"].update(iteration=13),
        lambda c: c["model"].update(extra=torch.zeros(1)),
    ):
        damaged = {
            "model": dict(content["model"]),
            "trainer": dict(content["trainer"]),
            "checksum": content["checksum"],
        }
        damaged["model"]["w"] = content["model"]["w"].clone()
        damage(damaged)
        with pytest.raises(ChecksumMismatchError):
            verify_checksum(damaged)
    assert not verify_checksum({"model": {}})  # written before checksums: loads as before


def flip_tensor_bits(path: Path) -> None:
    """A bit flip in a stored tensor, as a failing disk makes it: the file stays a valid archive."""
    content = torch.load(path, weights_only=True)
    weight = next(v for k, v in content["model"].items() if v.dtype == torch.float32)
    weight.view(-1).view(torch.int32)[0] ^= 1 << 20
    torch.save(content, path)


@pytest.mark.e2e
def test_a_damaged_checkpoint_is_refused_and_a_folder_resume_falls_back(tiny_opts, market_root, tmp_path):
    out = tmp_path / "run"
    settings = {"SOLVER.MAX_EPOCHS": "2", "SOLVER.CHECKPOINT_PERIOD": "1", "SOLVER.EVAL_PERIOD": "5"}
    train(load_config(None, tiny_opts(market_root, out, **settings)))
    newest = out / "checkpoints/checkpoint_2.pt"
    flip_tensor_bits(newest)
    more = tiny_opts(market_root, out, **{**settings, "SOLVER.MAX_EPOCHS": "3"})
    with pytest.raises(UserError, match=r"checkpoint_2\.pt is corrupted") as refused:
        train(load_config(None, more), resume=str(newest))
    assert "\n" not in str(refused.value)
    train(load_config(None, more), resume=str(out))
    log = (out / "log.txt").read_text()
    assert "Passed over a damaged checkpoint" in log and "checkpoint_1.pt, the newest intact checkpoint" in log
    assert "Resumed from" in log and "checkpoint_1.pt (epoch 1" in log

    raw = out / "checkpoints/checkpoint_3.pt"
    data = bytearray(raw.read_bytes())
    for position in (len(data) // 3, len(data) // 2, 2 * len(data) // 3):
        data[position] ^= 0xFF
    raw.write_bytes(bytes(data))
    proc = subprocess.run(
        [sys.executable, "test.py", *more, "TEST.WEIGHT", str(raw)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "checkpoint_3.pt" in lines[0] and ("corrupted" in lines[0] or "cannot read" in lines[0])


# ------------------------------------------------------------------------------------------ DataLoader workers


def test_a_killed_worker_is_named_with_its_signal_and_advice():
    message = killed_worker_message(RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. "))
    assert "killed by signal Killed" in message and "out-of-memory" in message and "DATALOADER.NUM_WORKERS" in message
    message = killed_worker_message(RuntimeError("DataLoader worker (pid(s) 17, 18) exited unexpectedly"))
    assert "exited unexpectedly" in message
    assert killed_worker_message(RuntimeError("CUDA error: out of memory")) is None


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.e2e
def test_a_worker_killed_by_sigkill_ends_in_one_line(tiny_opts, market_root, tmp_path):
    out = tmp_path / "run"
    opts = tiny_opts(market_root, out, **{**SIGNAL_RUN, "DATALOADER.NUM_WORKERS": "2", "SOLVER.MAX_EPOCHS": "20"})
    process = subprocess.Popen(
        train_command(opts), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    wait_for(out / "log.txt", "Epoch[1] Iteration[1/6]", process)
    workers = children_of(process.pid)
    assert workers, "no DataLoader worker found"
    os.kill(workers[0], signal.SIGKILL)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr[-3000:]
    assert "DataLoader worker" in lines[0] and "DATALOADER.NUM_WORKERS" in lines[0]
