"""What train.py and test.py share: the command line, the process group, and one-line user errors."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from collections.abc import Callable

import ignite.distributed as idist
import torch

from config import UserError, load_config
from engine.reporting.run_files import WRITE_FAILURE_REASONS, DiskWriteError


def parse_command_line(description: str, with_resume: bool, argv: list[str] | None = None) -> argparse.Namespace:
    """`--config_file FILE [--resume PATH] KEY VALUE ...` (the reid-strong-baseline grammar)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config_file", default="", help="YAML experiment file (keys of config/defaults.py)")
    if with_resume:
        parser.add_argument(
            "--resume",
            default=None,
            metavar="PATH",
            help="continue from a checkpoint .pt, or from an OUTPUT_DIR's latest checkpoint",
        )
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE", help="pairs overriding the file's keys")
    args, extra = parser.parse_known_args(argv)
    # Options may follow the KEY VALUE pairs: argparse leaves what it did not place in `extra`.
    unknown = [a for a in extra if a.startswith("--")]
    if unknown:
        raise UserError(
            f"unknown option {unknown[0]}; expected --config_file FILE"
            f"{' [--resume PATH]' if with_resume else ''} followed by KEY VALUE pairs"
        )
    args.opts = list(args.opts) + extra
    return args


def _backend() -> str | None:
    """torchrun sets WORLD_SIZE: then NCCL on CUDA machines, Gloo otherwise; one process needs none."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "nccl" if torch.cuda.is_available() else "gloo"
    return None


def user_message(error: BaseException) -> str:
    """The user's part of an error message: a DataLoader worker wraps it in its own traceback text,
    whose last line is the original error."""
    text = str(error).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        for prefix in (f"{type(error).__module__}.{type(error).__name__}: ", f"{type(error).__name__}: "):
            if last.startswith(prefix):
                last = last[len(prefix) :]
        return last
    return text or type(error).__name__


_KILLED_WORKER = re.compile(
    r"DataLoader worker \(pid(?:\(s\))? [\d, ]+\) (?:is killed by signal: (.+?)\.?\s*$|exited unexpectedly)"
)


def killed_worker_message(error: RuntimeError) -> str | None:
    """One line for a DataLoader worker that a signal killed (most often the out-of-memory killer), else None."""
    match = _KILLED_WORKER.search(str(error))
    if match is None:
        return None
    how = f"was killed by signal {match.group(1)}" if match.group(1) else "exited unexpectedly"
    if match.group(1) and "Killed" in match.group(1):
        how += f" ({signal.Signals.SIGKILL.name}: most often the out-of-memory killer)"
    elif match.group(1) and "Bus error" in match.group(1):
        how += " (shared memory is too small: in a container, raise its --shm-size)"
    return (
        f"a DataLoader worker {how}; lower DATALOADER.NUM_WORKERS or the batch sizes (SOLVER.IMS_PER_BATCH, "
        "TEST.IMS_PER_BATCH), or give the job more memory; checkpoints written so far are kept"
    )


def exit_status(job: Callable[[], object], interrupted: str = "interrupted") -> int:
    """Run `job()` and return the process's exit status: 0, or, for what a user can cause, 2 (130 for Ctrl-C;
    a run stopped by a signal carries its own) after one line on stderr: a UserError, a write the disk refused,
    a DataLoader worker killed by a signal. Anything else propagates with its traceback (a bug)."""
    try:
        job()
    except UserError as error:
        print(f"error: {user_message(error)}", file=sys.stderr)
        return getattr(error, "exit_code", 2)  # a run stopped by a signal exits 143 / 130
    except DiskWriteError as error:
        print(f"error: {error}; files written before are intact", file=sys.stderr)
        return 2
    except OSError as error:
        # a write outside the run's own writers (TensorBoard, a picture) that the disk refused: one line too
        if error.errno not in WRITE_FAILURE_REASONS:
            raise
        print(
            f"error: {DiskWriteError(error.filename or '?', error)}; files written before are intact", file=sys.stderr
        )
        return 2
    except RuntimeError as error:
        message = killed_worker_message(error)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    return 0


def run_entry_point(job: Callable, description: str, with_resume: bool) -> None:
    """Parse the command line, load the config, run `job(cfg, args)` in the process group; exit 2 on a
    user error with one line on stderr (exit_status)."""

    def parse_and_run() -> None:
        args = parse_command_line(description, with_resume)
        cfg = load_config(args.config_file, args.opts)
        backend = _backend()
        if backend is None:
            job(cfg, args)  # one process: no process group to set up
        else:
            with idist.Parallel(backend=backend) as parallel:
                parallel.run(lambda local_rank: job(cfg, args))

    status = exit_status(parse_and_run, "interrupted; checkpoints written so far are kept")
    if status:
        sys.exit(status)
