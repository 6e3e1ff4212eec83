"""No per-iteration host synchronisation in the training step or its handlers: the engine's own code reads a
tensor's value on the host (item, tolist, bool, float, int, numpy) only at the reads of SOLVER.LOG_PERIOD and at
the end of each epoch. Counted on the CPU around every such call made from the engine's files: two runs with the
same epochs, evaluations and reads but twice as many iterations per epoch make the same number of reads (the
BoT losses and NAMA's). The evaluation's extraction likewise: the same items in twice as many batches, the same reads.
(On CUDA the same holds for device synchronisations: torch.cuda.set_sync_debug_mode would report them.)"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from config import load_config
from engine.evaluation.dataset_evaluation import EmbeddingMetric, build_extractor
from engine.evaluation.protocol import EvalSpec
from engine.run.precision import Precision
from engine.training import train

ROOT = Path(__file__).resolve().parents[1]
ENGINE_PARTS = tuple(str(ROOT / part) for part in ("engine", "layers", "data", "solver", "modeling"))
READS = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy")


@pytest.fixture
def host_reads(monkeypatch) -> Counter:
    """Counts the host reads of tensor values made directly by the engine's code, by caller (file:line)."""
    counts: Counter = Counter()
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            caller = sys._getframe(1)
            if caller.f_code.co_filename.startswith(ENGINE_PARTS):
                counts[f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno}"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


CASES = {
    "softmax + triplet": {},
    "NAMA: uc-tri-n + softmax": {
        "MODEL.ARCH": "uc-bn-no",
        "MODEL.METRIC_LOSS_TYPE": "uc-tri-n",
        "MODEL.NECK": "no",
        "MODEL.F_BASE": "nn_128",
    },
}
# Not here: losses whose mining draws a data-dependent set of triplets (the margin loss's distance-weighted
# sampling groups its anchors by their count of positives on the host); their reads are the algorithm's own.


@pytest.mark.e2e
@pytest.mark.parametrize("case", sorted(CASES))
def test_twice_the_iterations_make_no_more_host_reads(tiny_opts, market_root, tmp_path, host_reads, case):
    settings = {
        **CASES[case],
        "SOLVER.MAX_EPOCHS": "2",
        "SOLVER.EVAL_PERIOD": "2",
        "SOLVER.CHECKPOINT_PERIOD": "2",
        "SOLVER.LOG_PERIOD": "1000",  # reads at the epochs' ends only
        "LOG.PLOTS": "no",
    }
    seen = []
    for batch in ("8", "4"):  # 3, then 6 iterations per epoch on the tiny tree
        host_reads.clear()
        out = tmp_path / f"batch{batch}"
        train(load_config(None, tiny_opts(market_root, out, **{**settings, "SOLVER.IMS_PER_BATCH": batch})))
        seen.append(dict(host_reads))
    assert seen[0] == seen[1], f"reads that grow with the iterations: {set(seen[1].items()) - set(seen[0].items())}"


class _TinyEmbedder(torch.nn.Module):
    """An embedder's output dict from a 1x1 convolution and average pooling."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 1)

    def forward(self, images):
        feat = self.conv(images).mean(dim=(2, 3))
        return {"feat": feat, "neck_feat": feat * 2}


@pytest.mark.parametrize("flip", ["no", "yes"])
def test_extraction_reads_do_not_grow_with_batches(host_reads, flip):
    # The evaluation's extraction reads nothing per batch: its values reach the host once, when the metric
    # gathers and ranks them. Two extractions of the same items in 4 and in 8 batches make the same reads.
    gen = torch.Generator().manual_seed(0)
    items = 24
    images = torch.randn(items, 3, 8, 4, generator=gen)
    labels, camids = torch.arange(items) % 6, torch.arange(items) // 12  # query camera 0, gallery camera 1
    spec = EvalSpec("tiny", "reid", False, [(np.arange(12), np.arange(12, items))], ())
    model = _TinyEmbedder().eval()
    seen = []
    for batch in (6, 3):
        batches = [
            {"image": images[s : s + batch], "label": labels[s : s + batch], "camid": camids[s : s + batch],
             "index": torch.arange(s, min(s + batch, items))}
            for s in range(0, items, batch)
        ]  # fmt: skip
        extractor = build_extractor(model, Precision(False, torch.float32, "cpu"), torch.device("cpu"), "after", flip)
        EmbeddingMetric(spec).attach(extractor, "eval")
        host_reads.clear()
        extractor.run(batches)
        seen.append(dict(host_reads))
        assert extractor.state.metrics["eval"]["num_query"] == 12
    assert seen[0] == seen[1], f"reads that grow with the batches: {set(seen[1].items()) - set(seen[0].items())}"
