"""One training run: build everything from the config, attach the ignite handlers, run, evaluate."""

from __future__ import annotations

import logging
import sys

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar, TerminateOnNan, Timer
from ignite.metrics import RunningAverage

from config import UserError, changed_keys
from config.errors import check_choice
from data.build import build_data
from engine.evaluation.dataset_evaluation import DatasetEvaluation, format_metrics
from engine.methods import build_standard_trainer
from engine.reporting.curves import draw_curves
from engine.reporting.tensorboard_logging import RunTensorboard
from engine.run.checkpoints import (
    BestScore,
    build_checkpointer,
    load_training_state,
    resolve_resume_path,
    save_best_model,
)
from engine.run.device import broadcast_buffers, distribute, resolve_device
from engine.run.output_dir import (
    append_metrics,
    prepare_output_dir,
    save_config,
    setup_logging,
)
from engine.run.precision import resolve_precision
from engine.run.seeding import epoch_seed, seed_everything
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


def model_has_unused_parameters(cfg) -> bool:
    """Whether some trainable model parameters never get a gradient under this config: the BNNeck without a
    classification loss, NAMA's head when no uc loss reads its offsets, anything frozen by warm epochs."""
    from layers import metric_loss_names
    from modeling.arch import parse_arch

    if cfg.SOLVER.WARM_EPOCHS > 0:
        return True  # the warm epochs freeze all but the embedding layer
    neck_unused = cfg.MODEL.CLS_LOSS_TYPE == "none" and cfg.MODEL.NECK == "bnneck"
    uses_uc = cfg.MODEL.CLS_LOSS_TYPE == "uc-cls" or any(n.startswith("uc-") for n in metric_loss_names(cfg))
    return neck_unused or (parse_arch(cfg.MODEL.ARCH).uncertainty and not uses_uc)


def _every(period: int, last: int):
    """Event filter: every `period` epochs and at epoch `last`."""
    return lambda engine, epoch: epoch % period == 0 or epoch == last


def _attach_progress(cfg, trainer: Engine, part_names: tuple[str, ...], solver, output_dir) -> None:
    """Running averages of the loss parts, a progress bar (or log lines), and an epoch summary with timing,
    also appended to OUTPUT_DIR/train_metrics.jsonl (the curves' source)."""
    for name in part_names:
        RunningAverage(output_transform=lambda out, n=name: out[n].item(), alpha=0.98).attach(trainer, f"avg_{name}")
    averages = [f"avg_{n}" for n in part_names]
    timer = Timer(average=True)
    timer.attach(
        trainer,
        start=Events.EPOCH_STARTED,
        resume=Events.ITERATION_STARTED,
        pause=Events.ITERATION_COMPLETED,
        step=Events.ITERATION_COMPLETED,
    )

    def summary(engine: Engine) -> str:
        return "  ".join(
            f"{n[4:]}: {engine.state.metrics[n]:.4f}"
            if n != "avg_acc"
            else f"acc: {100 * engine.state.metrics[n]:.1f}%"
            for n in averages
            if n in engine.state.metrics
        )

    if idist.get_rank() == 0 and sys.stdout.isatty():
        ProgressBar(persist=False).attach(trainer, metric_names=averages)
    else:

        @trainer.on(Events.ITERATION_COMPLETED(every=cfg.SOLVER.LOG_PERIOD))
        def _log_iteration(engine: Engine) -> None:
            it = (engine.state.iteration - 1) % engine.state.epoch_length + 1
            logger.info(
                "Epoch[%d] Iteration[%d/%d] %s", engine.state.epoch, it, engine.state.epoch_length, summary(engine)
            )

    @trainer.on(Events.EPOCH_COMPLETED)
    def _log_epoch(engine: Engine) -> None:
        lr = solver.main.param_groups[0]["lr"]
        per_batch = timer.value()
        images = cfg.SOLVER.IMS_PER_BATCH / per_batch if per_batch > 0 else float("nan")
        logger.info(
            "Epoch[%d] done: %s  lr: %.2e  %.3f s/batch  %.1f images/s",
            engine.state.epoch,
            summary(engine),
            lr,
            per_batch,
            images,
        )
        record = {
            "epoch": engine.state.epoch,
            "iteration": engine.state.iteration,
            "lr": solver.learning_rates(),
            **{n[4:]: engine.state.metrics[n] for n in averages if n in engine.state.metrics},
            "seconds_per_batch": per_batch,
        }
        append_metrics(output_dir, record, "train_metrics.jsonl")


def train(cfg, resume: str | None = None) -> dict:
    """Train per `cfg` (optionally resuming), evaluating every SOLVER.EVAL_PERIOD; returns the last metrics."""
    resume_path = resolve_resume_path(resume) if resume is not None else None  # before anything is written
    output_dir = prepare_output_dir(cfg.OUTPUT_DIR, resuming=resume_path is not None)
    setup_logging(output_dir)
    if resume_path is not None and output_dir.resolve() not in resume_path.resolve().parents:
        logger.warning(
            "Resuming from %s, which is not under OUTPUT_DIR %s: the continued run writes to the latter",
            resume_path,
            output_dir,
        )
    log_config_changes(cfg)
    save_config(cfg, output_dir)
    seed_everything(cfg.SEED)
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
    scaler = precision.grad_scaler()
    trainer = build_standard_trainer(
        distribute(model, device, model_has_unused_parameters(cfg)),
        distribute(criterion, device),
        solver,
        scaler,
        precision,
        device,
    )
    evaluations = [DatasetEvaluation(cfg, model, precision, device, eval_set) for eval_set in data.eval_sets]
    main_metric = evaluations[0].spec.main_metric  # the first evaluated dataset picks the best model
    best = BestScore()
    to_save = {"model": model, "loss": criterion, "solver": solver, "scaler": scaler, "trainer": trainer, "best": best}
    max_epochs = cfg.SOLVER.MAX_EPOCHS
    history: list[dict] = []

    @trainer.on(Events.EPOCH_STARTED)
    def _seed_epoch(engine: Engine) -> None:
        # Everything random in epoch e follows from (SEED, e): a resumed run repeats it exactly.
        seed = epoch_seed(cfg.SEED, engine.state.epoch)
        seed_everything(seed)
        data.train_loader.batch_sampler.set_epoch(engine.state.epoch)
        data.train_loader.generator.manual_seed(seed)
        if cfg.SOLVER.WARM_EPOCHS > 0:
            model.set_warm(engine.state.epoch <= cfg.SOLVER.WARM_EPOCHS)

    trainer.add_event_handler(Events.ITERATION_COMPLETED, TerminateOnNan(output_transform=lambda out: out["loss"]))
    _attach_progress(cfg, trainer, criterion.part_names, solver, output_dir)
    tensorboard = RunTensorboard(cfg, output_dir)
    tensorboard.attach(trainer, criterion.part_names, solver, cfg.SOLVER.LOG_PERIOD)
    check_choice("LOG.PLOTS", cfg.LOG.PLOTS, ("yes", "no"))

    @trainer.on(Events.EPOCH_COMPLETED)
    def _step_schedule(engine: Engine) -> None:
        solver.epoch_completed()

    @trainer.on(Events.EPOCH_COMPLETED(event_filter=_every(cfg.SOLVER.EVAL_PERIOD, max_epochs)))
    def _evaluate(engine: Engine) -> None:
        broadcast_buffers(model)
        results = [evaluation.run() for evaluation in evaluations]
        epoch = engine.state.epoch
        if results[0][main_metric] > best.score:
            best.score, best.epoch = results[0][main_metric], epoch
            save_best_model(output_dir / "best.pt", model, epoch, results[0])
        for result in results:
            logger.info(
                "Validation at epoch %d on %s (%.1f s): %s  [best %s %.2f%% at epoch %d]",
                epoch,
                result["dataset"],
                result["eval_seconds"],
                format_metrics(result),
                main_metric,
                100 * best.score,
                best.epoch,
            )
            record = {
                "epoch": epoch,
                "iteration": engine.state.iteration,
                **result,
                f"best_{main_metric}": best.score,
                "best_epoch": best.epoch,
            }
            append_metrics(output_dir, record)
            tensorboard.log_evaluation(record, epoch)
            history.append(record)
        if cfg.LOG.PLOTS == "yes" and idist.get_rank() == 0:
            draw_curves(output_dir)

    trainer.add_event_handler(
        Events.EPOCH_COMPLETED(event_filter=_every(cfg.SOLVER.CHECKPOINT_PERIOD, max_epochs)),
        build_checkpointer(output_dir / "checkpoints", to_save),
    )

    if resume_path is not None:
        load_training_state(resume_path, to_save)
        if trainer.state.epoch >= max_epochs:
            raise UserError(
                f"--resume {resume_path}: that run already finished epoch {trainer.state.epoch} of "
                f"SOLVER.MAX_EPOCHS {max_epochs}; raise SOLVER.MAX_EPOCHS to train further"
            )

    trainer.run(data.train_loader, max_epochs=max_epochs)
    loss = trainer.state.output["loss"] if trainer.state.output else None
    if loss is not None and not torch.isfinite(loss):
        raise NonFiniteLossError(
            f"training stopped: the loss became {loss.item()} at epoch {trainer.state.epoch}, iteration "
            f"{trainer.state.iteration}; lower SOLVER.BASE_LR, lengthen the warm-up, or set SOLVER.AMP none. "
            f"Checkpoints of earlier epochs are in {output_dir / 'checkpoints'}"
        )
    logger.info(
        "Training finished after epoch %d; best %s %.2f%% at epoch %d; outputs in %s",
        trainer.state.epoch,
        main_metric,
        100 * best.score,
        best.epoch,
        output_dir,
    )
    return history[-1] if history else {}
