"""Training methods as plug-ins: SOLVER.METHOD picks one from engine/methods, a method gets the Run bundle,
attaches its own handlers, adds checkpointed state and logged statistics; gradient accumulation is checked
against one large batch, resumed exactly, and run under torchrun."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from torch import nn

from config import ConfigError, load_config
from engine.handlers import BestModel
from engine.methods import METHODS, Run, TrainingMethod
from engine.methods.grad_accum import GradientAccumulation, accumulation_window
from engine.methods.standard import StandardMethod
from engine.reporting.run_files import EVAL_RECORD_KEYS, TRAIN_RECORD_KEYS
from engine.run.precision import Precision
from engine.training import train
from layers.composite import CompositeLoss
from layers.softmax import SoftmaxClassifierLoss
from solver import Solver

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------
# The step of a method on a hand-built Run (no data, no files): gradient accumulation against one big batch
# ---------------------------------------------------------------------------------------------------------
class LinearEmbedder(nn.Module):
    """No BatchNorm, so that a batch's gradient does not depend on how the batches are cut (the loss itself
    computes in fp32, hence the tolerances below)."""

    def __init__(self, in_dim: int = 6, dim: int = 4):
        super().__init__()
        self.fc = nn.Linear(in_dim, dim)

    def forward(self, images: torch.Tensor) -> dict:
        feat = self.fc(images)
        return {"feat": feat, "neck_feat": feat}


def hand_built_run(steps: int, lr: float = 0.5) -> Run:
    torch.manual_seed(0)
    model = LinearEmbedder().double()
    criterion = CompositeLoss(SoftmaxClassifierLoss(4, 3), None).double()
    optimizer = torch.optim.SGD([*model.parameters(), *criterion.parameters()], lr=lr)
    cfg = load_config(None, ["SOLVER.METHOD", "grad_accum", "METHOD.GRAD_ACCUM.STEPS", str(steps)])
    return Run(
        cfg=cfg,
        model=model,
        trained_model=model,
        criterion=criterion,
        trained_criterion=criterion,
        solver=Solver({"main": optimizer}, {}),
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        precision=Precision(False, torch.float32, "cpu"),
        device=torch.device("cpu"),
        data=None,
        output_dir=Path("."),
    )


def batches(sizes: list[int], seed: int = 1) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randn(n, 6, generator=generator, dtype=torch.float64),
            "label": torch.randint(0, 3, (n,), generator=generator),
        }
        for n in sizes
    ]


def parameters_after(method: TrainingMethod, data: list[dict]) -> list[torch.Tensor]:
    trainer = Engine(method.process_function())
    method.attach(trainer)
    trainer.run(data, max_epochs=1)
    return [p.detach().clone() for p in [*method.run.model.parameters(), *method.run.criterion.parameters()]]


def test_accumulation_windows_restart_each_epoch_and_the_last_one_is_cut():
    assert [accumulation_window(i, 5, 2) for i in range(5)] == [(0, 2), (0, 2), (2, 2), (2, 2), (4, 1)]
    assert [accumulation_window(i, 3, 1) for i in range(3)] == [(0, 1), (1, 1), (2, 1)]
    assert [accumulation_window(i, 2, 4) for i in range(2)] == [(0, 2), (0, 2)]


def test_two_accumulated_batches_step_like_one_batch_twice_as_large():
    small = batches([5, 5])
    large = [{k: torch.cat([small[0][k], small[1][k]]) for k in small[0]}]
    accumulated = parameters_after(GradientAccumulation(hand_built_run(steps=2)), small)
    reference = parameters_after(StandardMethod(hand_built_run(steps=1)), large)
    untouched = [p.detach() for p in [*hand_built_run(1).model.parameters(), *hand_built_run(1).criterion.parameters()]]
    for a, b, c in zip(accumulated, reference, untouched):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        assert not torch.equal(a, c)  # it did train


def test_a_short_last_window_is_the_mean_of_its_own_batches():
    # epoch of 3 batches, windows of 2: steps after batches 2 and 3; the third batch alone is one full step
    data = batches([4, 4, 4])
    accumulated = parameters_after(GradientAccumulation(hand_built_run(steps=2)), data)
    first_two = [{k: torch.cat([data[0][k], data[1][k]]) for k in data[0]}, data[2]]
    reference = parameters_after(StandardMethod(hand_built_run(steps=1)), first_two)
    for a, b in zip(accumulated, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_optimizer_steps_are_counted_per_epoch_and_in_total():
    method = GradientAccumulation(hand_built_run(steps=2))
    trainer = Engine(method.process_function())
    method.attach(trainer)
    seen = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(dict(e.state.metrics)))
    trainer.run(batches([3, 3, 3]), max_epochs=2)
    assert seen == [
        {"optimizer_steps": 2, "optimizer_steps_total": 2},
        {"optimizer_steps": 2, "optimizer_steps_total": 4},
    ]
    assert method.state_dict() == {"optimizer_steps_total": 4, "optimizer_steps": 2}
    restored = GradientAccumulation(hand_built_run(steps=2))
    restored.load_state_dict(method.state_dict())
    assert restored.total_steps == 4


def test_bad_accumulation_steps_and_unknown_method_are_one_line_errors():
    run = hand_built_run(steps=1)
    run.cfg = load_config(None, ["SOLVER.METHOD", "grad_accum", "METHOD.GRAD_ACCUM.STEPS", "0"])
    with pytest.raises(ConfigError, match="METHOD.GRAD_ACCUM.STEPS = 0"):
        GradientAccumulation(run)
    from engine.methods import build_method

    with pytest.raises(ConfigError, match="SOLVER.METHOD = 'mmsi_typo' is not valid; expected one of: 'standard'"):
        build_method(load_config(None, ["SOLVER.METHOD", "mmsi_typo"]), run)


def test_best_model_keeps_its_state_in_checkpoints(tmp_path):
    best = BestModel(nn.Linear(2, 2), tmp_path / "best.pt", "mAP")
    trainer = Engine(lambda e, b: None)
    trainer.state.epoch = 4
    trainer.state.evaluation = [{"mAP": 0.5}]
    best(trainer)
    assert best.state_dict() == {"score": 0.5, "epoch": 4} and (tmp_path / "best.pt").is_file()
    trainer.state.evaluation = [{"mAP": 0.4}]
    trainer.state.epoch = 5
    best(trainer)
    assert best.state_dict() == {"score": 0.5, "epoch": 4}
    other = BestModel(nn.Linear(2, 2), tmp_path / "other.pt", "mAP")
    other.load_state_dict(best.state_dict())
    assert (other.score, other.epoch) == (0.5, 4)


# ---------------------------------------------------------------------------------------------------------
# End to end on a tiny Market-1501 tree
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_opts(tiny_opts):
    """The shared tiny run with grad_accum over windows of 2 batches of 4, checkpoints every epoch and one
    evaluation at the end (conftest's fixture with this module's settings)."""
    settings = {
        "SOLVER.IMS_PER_BATCH": "4",
        "SOLVER.EVAL_PERIOD": "3",
        "SOLVER.CHECKPOINT_PERIOD": "1",
        "LOG.TENSORBOARD": "no",
        "LOG.PLOTS": "no",
        "SOLVER.METHOD": "grad_accum",
        "METHOD.GRAD_ACCUM.STEPS": "2",
    }
    return lambda root, out, **overrides: tiny_opts(root, out, **{**settings, **overrides})


def train_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_metrics.jsonl").read_text().splitlines()]


def eval_records(out: Path) -> list[dict]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "eval_seconds"} for r in records]


@pytest.mark.e2e
def test_grad_accum_trains_logs_its_steps_and_resumes_exactly(tiny_opts, market_root, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    train(load_config(None, tiny_opts(market_root, full)))
    records = train_records(full)
    assert all(set(TRAIN_RECORD_KEYS) <= set(r) for r in records)
    raw = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert raw and all(set(EVAL_RECORD_KEYS) <= set(r) for r in raw)
    iterations = records[0]["iteration"]  # batches per epoch
    per_epoch = -(-iterations // 2)
    assert [r["optimizer_steps"] for r in records] == [per_epoch] * 3
    assert [r["optimizer_steps_total"] for r in records] == [per_epoch, 2 * per_epoch, 3 * per_epoch]
    assert "optimizer_steps" in (full / "log.txt").read_text()
    checkpoint = torch.load(full / "checkpoints/checkpoint_3.pt", weights_only=True)
    assert checkpoint["grad_accum"] == {"optimizer_steps_total": 3 * per_epoch, "optimizer_steps": per_epoch}
    # the main optimizer stepped once per window, not once per batch
    assert checkpoint["solver"]["optimizers"]["main"]["state"][0]["step"] == 3 * per_epoch

    train(load_config(None, tiny_opts(market_root, part, **{"SOLVER.MAX_EPOCHS": "2", "SOLVER.EVAL_PERIOD": "5"})))
    train(load_config(None, tiny_opts(market_root, part)), resume=str(part / "checkpoints/checkpoint_1.pt"))
    assert eval_records(part)[-1] == eval_records(full)[-1]
    assert train_records(part)[-1]["optimizer_steps_total"] == 3 * per_epoch
    resumed = torch.load(part / "checkpoints/checkpoint_3.pt", weights_only=True)
    for name in ("model", "loss"):
        assert all(torch.equal(checkpoint[name][k], resumed[name][k]) for k in checkpoint[name])


class ProbeMethod(StandardMethod):
    """A method that uses every hook of the extension point: a reseeder, its own handler, checkpointed
    state and an epoch statistic."""

    name = "probe"
    stat_names = ("probe_batches",)

    def __init__(self, run: Run):
        super().__init__(run)
        self.seeds: list[tuple[int, int]] = []
        self.batches = 0
        run.reseeders.append(lambda epoch, seed: self.seeds.append((epoch, seed)))

    def process_function(self):
        standard = super().process_function()

        def step(engine, batch):
            self.batches += 1
            return standard(engine, batch)

        return step

    def attach(self, trainer):
        trainer.add_event_handler(
            Events.EPOCH_COMPLETED, lambda e: e.state.metrics.__setitem__("probe_batches", self.batches)
        )

    def checkpoint_state(self):
        return {"probe": self}

    def state_dict(self):
        return {"batches": self.batches}

    def load_state_dict(self, state):
        self.batches = state["batches"]


@pytest.mark.e2e
def test_a_registered_method_gets_reseeded_checkpointed_and_logged(tiny_opts, market_root, tmp_path, monkeypatch):
    from engine.run.seeding import epoch_seed

    made = []
    monkeypatch.setitem(METHODS, "probe", lambda run: made.append(ProbeMethod(run)) or made[-1])
    out = tmp_path / "probe"
    train(load_config(None, tiny_opts(market_root, out, **{"SOLVER.METHOD": "probe", "SOLVER.MAX_EPOCHS": "2"})))
    method = made[0]
    assert method.seeds == [(1, epoch_seed(42, 1)), (2, epoch_seed(42, 2))]
    records = train_records(out)
    assert [r["probe_batches"] for r in records] == [records[0]["iteration"], records[1]["iteration"]]
    checkpoint = torch.load(out / "checkpoints/checkpoint_2.pt", weights_only=True)
    assert checkpoint["probe"] == {"batches": records[1]["iteration"]}
    assert "probe_batches" in (out / "log.txt").read_text()


@pytest.mark.e2e
@pytest.mark.distributed
def test_grad_accum_under_torchrun_with_two_processes(tiny_opts, market_root, tmp_path, free_port):
    out = tmp_path / "dist"
    opts = tiny_opts(market_root, out, **{"SOLVER.IMS_PER_BATCH": "8", "SOLVER.MAX_EPOCHS": "2"})
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port}"]
    proc = subprocess.run([*command, "train.py", *opts], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    records = train_records(out)
    assert [r["epoch"] for r in records] == [1, 2]  # rank 0 writes alone
    per_epoch = -(-records[0]["iteration"] // 2)
    assert [r["optimizer_steps_total"] for r in records] == [per_epoch, 2 * per_epoch]
    checkpoint = torch.load(out / "checkpoints/checkpoint_2.pt", weights_only=True)
    assert checkpoint["grad_accum"] == {"optimizer_steps_total": 2 * per_epoch, "optimizer_steps": per_epoch}
    assert [r["epoch"] for r in eval_records(out)] == [2]


def test_train_py_refuses_an_unknown_method_in_one_line_before_writing_anything(tmp_path):
    out = tmp_path / "never"
    proc = subprocess.run(
        [sys.executable, "train.py", "SOLVER.METHOD", "mmsi_typo", "OUTPUT_DIR", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: SOLVER.METHOD = 'mmsi_typo' is not valid; expected one of: 'standard', 'grad_accum', 'mmsi', 'ddtas', 'dc'"
    ]
    assert not out.exists()


def test_training_without_a_config_file_says_the_defaults_are_used(tmp_path):
    # the message is logged once logging is set up in OUTPUT_DIR; the run then stops at the missing dataset
    out = tmp_path / "defaults"
    proc = subprocess.run(
        [sys.executable, "train.py", "DATASETS.ROOT_DIR", str(tmp_path / "nowhere"), "OUTPUT_DIR", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "No --config_file given: training with the defaults" in (out / "log.txt").read_text()
