"""One training run: build everything from the config into a Run, let the training method of SOLVER.METHOD
make the step, compose the handlers in their one order, run, evaluate."""

from __future__ import annotations

import logging
import shlex
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

from config import UserError, changed_keys
from config.choices import YES_NO
from config.errors import check_choice
from data.build import build_data, release_workers
from data.device_augment import build_train_augment
from engine.evaluation.dataset_evaluation import DatasetEvaluation
from engine.handlers import (
    BestModel,
    EpochSeeding,
    EvaluationRecords,
    PeriodicEvaluation,
    ScheduleStepping,
    TrainingProgress,
    WarmEpochs,
    loader_reseeder,
)
from engine.handlers.epoch_clock import EpochClock, epoch_finished, iteration_in_epoch
from engine.handlers.evaluation import every
from engine.handlers.graceful_stop import GracefulStop, SignalWatch, StopRequested
from engine.handlers.loss_averages import NonFiniteLossError  # noqa: F401 (train() raises it, through progress)
from engine.handlers.within_epoch_resume import ResumeWithinEpoch
from engine.methods import Run, TrainingMethod, build_method, check_method
from engine.reporting.run_files import BEST_MODEL_FILE, CHECKPOINT_DIR, evaluated_epochs
from engine.reporting.tensorboard_logging import RunTensorboard
from engine.run.checkpoints import (
    ResumePoint,
    build_checkpointer,
    checkpoint_name,
    find_resume_point,
    load_training_state,
    write_checkpoint,
)
from engine.run.device import distribute, resolve_device
from engine.run.output_dir import RunFolder, open_run_folder, save_config, setup_logging
from engine.run.precision import resolve_precision
from engine.run.resume_config import (
    ConfigRecord,
    check_resume_changes,
    checkpoint_config_text,
    config_differences,
    log_honoured_changes,
    record_config_history,
    solver_keys_changed,
)
from engine.run.seeding import seed_everything
from engine.run.speed import maybe_compile, set_cudnn_benchmark, use_channels_last
from layers import build_loss
from modeling import build_model
from solver import build_solver

logger = logging.getLogger("train")


def log_config_changes(cfg) -> None:
    """The keys that differ from the defaults (the seeds' hyper-parameter display)."""
    changes = changed_keys(cfg)
    if changes:
        width = max(len(k) for k in changes)
        rows = "\n".join(f"  {k:<{width}}  {new!r}  (default {old!r})" for k, (old, new) in changes.items())
        logger.info("Keys that differ from the defaults:\n%s", rows)


def build_run(cfg, output_dir) -> Run:
    """Model, data, criterion, solver, precision and device of `cfg`, with the DDP wrappers the step calls and
    the training loader's per-epoch reseeding."""
    device = resolve_device(cfg.MODEL.DEVICE)
    precision = resolve_precision(cfg.SOLVER.AMP, device)
    logger.info(
        "Device %s, %d process(es), precision %s",
        device,
        idist.get_world_size(),
        str(precision.dtype).replace("torch.", "") if precision.enabled else "fp32",
    )
    set_cudnn_benchmark(cfg, device)
    channels_last = use_channels_last(cfg, device)
    model = build_model(cfg)
    data = build_data(cfg)
    criterion = build_loss(cfg, data.num_classes, model.feat_dim)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    criterion.to(device)
    solver = build_solver(cfg, model, criterion)
    return Run(
        cfg=cfg,
        model=model,
        # DDP must be told when some trainable parameters get no gradient: outputs no loss term reads (the
        # BNNeck without a classification loss, NAMA's head without a uc loss), or the warm epochs' freezing
        trained_model=maybe_compile(
            cfg,
            distribute(
                model,
                device,
                cfg.SOLVER.WARM_EPOCHS > 0 or model.has_parameters_without_gradient(criterion.consumed_outputs()),
            ),
        ),
        criterion=criterion,
        trained_criterion=distribute(criterion, device),
        solver=solver,
        scaler=precision.grad_scaler(),
        precision=precision,
        device=device,
        data=data,
        output_dir=output_dir,
        reseeders=[loader_reseeder(data.train_loader)],
        channels_last=channels_last,
        augment=build_train_augment(cfg, data.train_protocol, channels_last),
    )


@dataclass
class RunHandlers:
    """What attach_run_handlers built that train() uses afterwards."""

    to_save: dict  # the checkpointed objects by entry name
    records: EvaluationRecords
    evaluation: PeriodicEvaluation
    best: BestModel
    within_epoch: ResumeWithinEpoch
    clock: EpochClock
    checkpoint_epochs: Callable  # the event filter of the periodic checkpoints (engine, epoch) -> bool
    tensorboard: RunTensorboard


def attach_run_handlers(trainer: Engine, run: Run, method: TrainingMethod, stop: GracefulStop) -> RunHandlers:
    """Attach every handler of a training run, in the one order they must fire (ignite calls the handlers of
    an event in the order they were attached).

    STARTED            TrainingProgress sets back the running averages of a resumed run
    EPOCH_STARTED      1 EpochClock.begin (where the epoch starts: batches_done_in_epoch is right from here on)
                       2 EpochSeeding (Python/NumPy/torch and every reseeder from (SEED, epoch))
                       3 ResumeWithinEpoch (only for an epoch resumed after its k-th batch: the generators' states
                         after that batch, and the training loader skips the k batches)
                       4 WarmEpochs (the backbone frozen during SOLVER.WARM_EPOCHS)
                       5 the method's own handlers (they see the epoch's seeds and warm state; they may re-plan the
                         epoch, e.g. re-cluster and give the loader another length)
                       6 EpochClock.plan (the epoch's length: the training loader's length now)
    ITERATION_COMPLETED  progress: the running averages updated on the device (no host synchronisation), and
                       every SOLVER.LOG_PERIOD iterations read to the host (a non-finite loss since the last
                       read stops the run: NonFiniteLossError) and logged (timer, bar or log lines); then
                       TensorBoard's per-iteration loss (every SOLVER.LOG_PERIOD), then GracefulStop (a signal:
                       stop here with a checkpoint, unless this is the epoch's last iteration)
    EPOCH_COMPLETED    1 the method's own handlers (its epoch statistics, before they are logged)
                       2 TrainingProgress (the averages read: a non-finite loss stops the run before the
                         epoch's checkpoint; epoch line, train_metrics.jsonl)
                       3 TensorBoard (averages, statistics, learning rates of the epoch just trained)
                       4 ScheduleStepping (learning rates of the next epoch)
                       5 the checkpoint, before the evaluation: a failed evaluation (an unreadable gallery image,
                         memory, a full disk while best.pt is written) loses no training; the checkpoint's best
                         score is the one before this epoch's evaluation (BestModel.catch_up reads best.pt
                         after a resume)
                       6 GracefulStop (a signal: stop here, before the evaluation, which the resumed run does)
                       7 PeriodicEvaluation -> EVALUATION_COMPLETED: BestModel (best.pt), then EvaluationRecords
                         (log lines, metrics.jsonl, TensorBoard, curves), which carry the best score
                       8 EpochClock.end (between epochs, a length ignite cannot take for the end of the run)
    COMPLETED          TensorBoard closes its files
    """
    cfg = run.cfg
    max_epochs = cfg.SOLVER.MAX_EPOCHS
    check_choice("LOG.PLOTS", cfg.LOG.PLOTS, YES_NO)
    evaluation = PeriodicEvaluation(
        [DatasetEvaluation(cfg, run.model, run.precision, run.device, eval_set) for eval_set in run.data.eval_sets],
        run.model,
        cfg.SOLVER.EVAL_PERIOD,
        max_epochs,
        run.output_dir,
    )
    best = BestModel(run.model, run.output_dir / BEST_MODEL_FILE, evaluation.main_metric)
    tensorboard = RunTensorboard(cfg, run.output_dir)
    records = EvaluationRecords(run.output_dir, best, tensorboard, draw_plots=cfg.LOG.PLOTS == "yes")
    part_names = run.criterion.part_names
    progress = TrainingProgress(
        part_names, method.stat_names, run.solver, cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.LOG_PERIOD, run.output_dir
    )
    within_epoch = ResumeWithinEpoch(run.data.train_loader)
    clock = EpochClock(trainer, run.data.train_loader)

    clock.attach_begin(trainer)
    EpochSeeding(cfg.SEED, run.reseeders).attach(trainer)
    within_epoch.attach(trainer)
    WarmEpochs(run.model, cfg.SOLVER.WARM_EPOCHS).attach(trainer)
    method.attach(trainer)
    clock.attach_plan(trainer)
    progress.attach(trainer)
    tensorboard.attach(trainer, part_names, run.solver, cfg.SOLVER.LOG_PERIOD, method.stat_names)
    stop.attach(trainer)
    ScheduleStepping(run.solver).attach(trainer)
    to_save = {
        "model": run.model,
        "loss": run.criterion,
        "solver": run.solver,
        "scaler": run.scaler,
        "trainer": clock,  # ignite's state of the trainer, with the epoch lengths it cannot keep itself
        "best": best,
        "progress": progress,
        "config": ConfigRecord(cfg),
        **method.checkpoint_state(),
    }
    checkpoint_epochs = every(cfg.SOLVER.CHECKPOINT_PERIOD, max_epochs)
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED(event_filter=checkpoint_epochs),
        build_checkpointer(run.output_dir / CHECKPOINT_DIR, to_save),
    )
    stop.attach_after_checkpoint(trainer)
    stop.attach_to_evaluations(evaluation.evaluations)
    evaluation.attach(trainer)
    best.attach(trainer)
    records.attach(trainer)
    clock.attach_end(trainer)
    return RunHandlers(to_save, records, evaluation, best, within_epoch, clock, checkpoint_epochs, tensorboard)


# Checkpoint entries that checkpoints of older versions lack (and mid-epoch ones only hold)
OPTIONAL_ENTRIES = ("progress", "config", "within_epoch")


class RunInterrupted(UserError):
    """A signal stopped the run after a checkpoint was written; exits 143 (SIGTERM) or 130 (SIGINT)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def resume_command(output_dir: Path) -> str:
    """This process's command line with --resume OUTPUT_DIR (replacing any --resume it had)."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith("--resume="):
            args.append(arg)
    return shlex.join(["python", Path(sys.argv[0]).name or "train.py", *args, "--resume", str(output_dir)])


def checkpoint_on_stop(trainer: Engine, handlers: RunHandlers, output_dir: Path) -> Path:
    """The checkpoint of the state a signal stopped the run in: after k batches of an epoch a mid-epoch file
    (with the generators' states); at an epoch's end the epoch's file, written now unless the periodic
    checkpoint of that epoch already was."""
    checkpoint_dir = output_dir / CHECKPOINT_DIR
    epoch = trainer.state.epoch
    done = 0 if epoch_finished(trainer) else iteration_in_epoch(trainer)
    if done:
        to_save = {**handlers.to_save, "within_epoch": handlers.within_epoch}
        return write_checkpoint(checkpoint_dir, checkpoint_name(epoch, done), to_save)
    if handlers.checkpoint_epochs(trainer, epoch):
        return checkpoint_dir / checkpoint_name(epoch)
    return write_checkpoint(checkpoint_dir, checkpoint_name(epoch), handlers.to_save)


def resume_training_state(point: ResumePoint, run: Run, handlers: RunHandlers, honoured: dict) -> None:
    """Load the checkpoint into the run's objects, apply the honoured key changes, and catch up the best score."""
    configured = run.solver.configured_state()
    load_training_state(point, {**handlers.to_save, "within_epoch": handlers.within_epoch}, OPTIONAL_ENTRIES)
    if solver_keys_changed(honoured):
        run.solver.adopt_configuration(configured)
    log_honoured_changes(honoured)
    handlers.best.catch_up(handlers.to_save["trainer"].state.epoch)


def train(cfg, resume: str | None = None, config_file: str | None = None) -> dict:
    """Train per `cfg` (optionally resuming), evaluating every SOLVER.EVAL_PERIOD; returns the last metrics.

    `config_file`: the --config_file train.py was given ('' = none: the log says the defaults are used)."""
    check_method(cfg)  # a registry name: checked here rather than at load, but before anything is built
    point = find_resume_point(resume) if resume is not None else None  # read and verified before any write
    folder = open_run_folder(cfg.OUTPUT_DIR, resuming=point is not None)
    try:
        return _train_in_folder(cfg, point, config_file, folder)
    finally:
        folder.close()


def _train_in_folder(cfg, point: ResumePoint | None, config_file: str | None, folder: RunFolder) -> dict:
    output_dir = folder.path
    setup_logging(output_dir)
    folder.report(logger)
    honoured: dict = {}
    if point is not None:
        for reason in point.passed_over:
            logger.warning("Passed over a damaged checkpoint: %s", reason)
        if point.passed_over:
            logger.warning("Resuming from %s, the newest intact checkpoint", point.path)
        if output_dir.resolve() not in point.path.resolve().parents:
            logger.warning(
                "Resuming from %s, which is not under OUTPUT_DIR %s: the continued run writes to the latter",
                point.path,
                output_dir,
            )
        saved_config = checkpoint_config_text(point.content, point.path)
        if saved_config is not None:
            honoured = check_resume_changes(config_differences(saved_config, cfg), point.path)
    if config_file == "":
        logger.warning(
            "No --config_file given: training with the defaults of config/defaults.py and the command "
            "line's KEY VALUE pairs"
        )
    log_config_changes(cfg)
    seed_everything(cfg.SEED)
    run = build_run(cfg, output_dir)
    method = build_method(cfg, run)
    trainer = Engine(method.process_function())
    watch = SignalWatch()
    stop = GracefulStop(watch, method.at_step_boundary, agree_every=cfg.SOLVER.LOG_PERIOD)
    handlers = attach_run_handlers(trainer, run, method, stop)
    max_epochs = cfg.SOLVER.MAX_EPOCHS
    evaluate_first = False
    start = "epoch 0"
    if point is not None:
        resume_training_state(point, run, handlers, honoured)
        epoch = trainer.state.epoch
        done = handlers.clock.resumed_batches()
        start = f"epoch {epoch}" if not done else f"epoch {epoch + 1} batch {done}"
        # an evaluation that the checkpoint's epoch was due but that did not complete (a signal, a failure)
        evaluate_first = (
            not done
            and epoch > 0
            and every(cfg.SOLVER.EVAL_PERIOD, max_epochs)(trainer, epoch)
            and epoch not in evaluated_epochs(output_dir, handlers.evaluation.evaluations[0].spec.name)
        )
        if epoch >= max_epochs and not evaluate_first:
            raise UserError(
                f"--resume {point.path}: that run already finished epoch {epoch} of "
                f"SOLVER.MAX_EPOCHS {max_epochs}; raise SOLVER.MAX_EPOCHS to train further"
            )
    # the resume is accepted: from here on the folder describes this run
    save_config(cfg, output_dir)
    if idist.get_rank() == 0:
        record_config_history(output_dir, cfg, start, honoured)

    watch.install()
    try:
        if evaluate_first:
            logger.info(
                "Evaluating epoch %d, whose evaluation the interrupted run did not complete", trainer.state.epoch
            )
            handlers.evaluation(trainer)
        if trainer.state.epoch < max_epochs:  # the epochs completed (an interrupted one is not)
            trainer.run(run.data.train_loader, max_epochs=max_epochs)
    except StopRequested as request:
        path = checkpoint_on_stop(trainer, handlers, output_dir)
        name = signal.Signals(request.signum).name
        raise RunInterrupted(
            f"stopped by {name} at epoch {trainer.state.epoch}, iteration {trainer.state.iteration}; the run is "
            f"saved in {path}; continue with: {resume_command(output_dir)}",
            request.exit_code,
        ) from None
    finally:
        watch.uninstall()
        handlers.tensorboard.close()
        release_workers(run.data.train_loader)
    best = handlers.best
    logger.info(
        "Training finished after epoch %d; best %s %.2f%% at epoch %d; outputs in %s",
        trainer.state.epoch,
        best.main_metric,
        100 * best.score,
        best.epoch,
        output_dir,
    )
    return handlers.records.history[-1] if handlers.records.history else {}
