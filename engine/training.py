"""One training run: build everything from the config into a Run, let the training method of SOLVER.METHOD
make the step, compose the handlers in their one order, run, evaluate."""

from __future__ import annotations

import logging

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import TerminateOnNan

from config import UserError, changed_keys
from config.choices import YES_NO
from config.errors import check_choice
from data.build import build_data
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
from engine.handlers.evaluation import every
from engine.methods import Run, TrainingMethod, build_method, check_method
from engine.reporting.run_files import BEST_MODEL_FILE, CHECKPOINT_DIR
from engine.reporting.tensorboard_logging import RunTensorboard
from engine.run.checkpoints import build_checkpointer, latest_checkpoint, load_training_state, resolve_resume_path
from engine.run.device import distribute, resolve_device
from engine.run.output_dir import prepare_output_dir, save_config, setup_logging
from engine.run.precision import resolve_precision
from engine.run.seeding import seed_everything
from layers import build_loss
from modeling import build_model
from solver import build_solver

logger = logging.getLogger("train")


class NonFiniteLossError(UserError):
    """Training stopped because the loss became NaN or infinite."""


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
    model = build_model(cfg)
    data = build_data(cfg)
    criterion = build_loss(cfg, data.num_classes, model.feat_dim)
    model.to(device)
    criterion.to(device)
    solver = build_solver(cfg, model, criterion)
    return Run(
        cfg=cfg,
        model=model,
        # DDP must be told when some trainable parameters get no gradient: outputs no loss term reads (the
        # BNNeck without a classification loss, NAMA's head without a uc loss), or the warm epochs' freezing
        trained_model=distribute(
            model,
            device,
            cfg.SOLVER.WARM_EPOCHS > 0 or model.has_parameters_without_gradient(criterion.consumed_outputs()),
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
    )


def attach_run_handlers(trainer: Engine, run: Run, method: TrainingMethod) -> tuple[dict, EvaluationRecords]:
    """Attach every handler of a training run, in the one order they must fire (ignite calls the handlers of
    an event in the order they were attached); returns the checkpointed objects and the evaluation records.

    EPOCH_STARTED      1 EpochSeeding (Python/NumPy/torch and every reseeder from (SEED, epoch))
                       2 WarmEpochs (the backbone frozen during SOLVER.WARM_EPOCHS)
                       3 the method's own handlers (they see the epoch's seeds and warm state)
    ITERATION_COMPLETED  TerminateOnNan, then progress (running averages, timer, bar or log lines),
                       then TensorBoard's per-iteration loss
    EPOCH_COMPLETED    1 the method's own handlers (its epoch statistics, before they are logged)
                       2 TrainingProgress (epoch line, train_metrics.jsonl)
                       3 TensorBoard (averages, statistics, learning rates of the epoch just trained)
                       4 ScheduleStepping (learning rates of the next epoch)
                       5 the checkpoint, before the evaluation: a failed evaluation (an unreadable gallery image,
                         memory, a full disk while best.pt is written) loses no training; the checkpoint's best
                         score is the one before this epoch's evaluation (BestModel.catch_up reads best.pt
                         after a resume)
                       6 PeriodicEvaluation -> EVALUATION_COMPLETED: BestModel (best.pt), then EvaluationRecords
                         (log lines, metrics.jsonl, TensorBoard, curves), which carry the best score
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

    EpochSeeding(cfg.SEED, run.reseeders).attach(trainer)
    WarmEpochs(run.model, cfg.SOLVER.WARM_EPOCHS).attach(trainer)
    method.attach(trainer)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, TerminateOnNan(output_transform=lambda out: out["loss"]))
    TrainingProgress(
        part_names, method.stat_names, run.solver, cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.LOG_PERIOD, run.output_dir
    ).attach(trainer)
    tensorboard.attach(trainer, part_names, run.solver, cfg.SOLVER.LOG_PERIOD, method.stat_names)
    ScheduleStepping(run.solver).attach(trainer)
    to_save = {
        "model": run.model,
        "loss": run.criterion,
        "solver": run.solver,
        "scaler": run.scaler,
        "trainer": trainer,
        "best": best,
        **method.checkpoint_state(),
    }
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED(event_filter=every(cfg.SOLVER.CHECKPOINT_PERIOD, max_epochs)),
        build_checkpointer(run.output_dir / CHECKPOINT_DIR, to_save),
    )
    evaluation.attach(trainer)
    best.attach(trainer)
    records.attach(trainer)
    return to_save, records


def train(cfg, resume: str | None = None, config_file: str | None = None) -> dict:
    """Train per `cfg` (optionally resuming), evaluating every SOLVER.EVAL_PERIOD; returns the last metrics.

    `config_file`: the --config_file train.py was given ('' = none: the log says the defaults are used)."""
    check_method(cfg)  # a registry name: checked here rather than at load, but before anything is built
    resume_path = resolve_resume_path(resume) if resume is not None else None  # before anything is written
    output_dir = prepare_output_dir(cfg.OUTPUT_DIR, resuming=resume_path is not None)
    setup_logging(output_dir)
    if resume_path is not None and output_dir.resolve() not in resume_path.resolve().parents:
        logger.warning(
            "Resuming from %s, which is not under OUTPUT_DIR %s: the continued run writes to the latter",
            resume_path,
            output_dir,
        )
    if config_file == "":
        logger.warning(
            "No --config_file given: training with the defaults of config/defaults.py and the command "
            "line's KEY VALUE pairs"
        )
    log_config_changes(cfg)
    save_config(cfg, output_dir)
    seed_everything(cfg.SEED)
    run = build_run(cfg, output_dir)
    method = build_method(cfg, run)
    trainer = Engine(method.process_function())
    to_save, records = attach_run_handlers(trainer, run, method)
    max_epochs = cfg.SOLVER.MAX_EPOCHS
    if resume_path is not None:
        load_training_state(resume_path, to_save)
        to_save["best"].catch_up(trainer.state.epoch)
        if trainer.state.epoch >= max_epochs:
            raise UserError(
                f"--resume {resume_path}: that run already finished epoch {trainer.state.epoch} of "
                f"SOLVER.MAX_EPOCHS {max_epochs}; raise SOLVER.MAX_EPOCHS to train further"
            )

    trainer.run(run.data.train_loader, max_epochs=max_epochs)
    loss = trainer.state.output["loss"] if trainer.state.output else None
    if loss is not None and not torch.isfinite(loss):
        if trainer.state.iteration == 1:  # before any step: not the learning rate's doing
            advice = (
                "it was not finite before any optimizer step, so look at the config rather than the learning "
                "rate: the loss's keys (scales, margins), the input normalisation, MODEL.PRETRAIN_PATH, SOLVER.AMP"
            )
        else:
            advice = "lower SOLVER.BASE_LR, lengthen the warm-up, or set SOLVER.AMP none"
        latest = latest_checkpoint(output_dir)
        kept = f"the latest checkpoint is {latest}" if latest is not None else "no checkpoint was written yet"
        raise NonFiniteLossError(
            f"training stopped: the loss became {loss.item()} at epoch {trainer.state.epoch}, iteration "
            f"{trainer.state.iteration}; {advice}; {kept}"
        )
    best = to_save["best"]
    logger.info(
        "Training finished after epoch %d; best %s %.2f%% at epoch %d; outputs in %s",
        trainer.state.epoch,
        best.main_metric,
        100 * best.score,
        best.epoch,
        output_dir,
    )
    return records.history[-1] if records.history else {}
