"""No per-iteration host synchronisation in the training step or its handlers: the engine's own code reads a
tensor's value on the host (item, tolist, bool, float, int, numpy) only at the reads of SOLVER.LOG_PERIOD and at
the end of each epoch. Counted on the CPU around every such call made from the engine's files: two runs with the
same epochs, evaluations and reads but twice as many iterations per epoch make the same number of reads (the
BoT losses and NAMA's).
(On CUDA the same holds for device synchronisations: torch.cuda.set_sync_debug_mode would report them.)"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from config import load_config
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
