"""tools/summarize.py: one table over a sweep of run folders.

The fixture builds a small sweep under tmp_path/logs the way train.py leaves it (config.yaml as a nested YAML
mapping, metrics.jsonl with one line per evaluation): two re-ID runs (one resumed, with epoch 20 evaluated
twice), one re-ID run with no evaluation yet and one retrieval run. The expected tables are written out by hand
from those numbers.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "summarize.py"
_spec = importlib.util.spec_from_file_location("summarize", SCRIPT)
summarize_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(summarize_mod)
SummaryError = summarize_mod.SummaryError


def _config(out: Path, names: str, lr: float, steps: list[int]) -> dict:
    return {
        "DATASETS": {"NAMES": names, "ROOT_DIR": "./datasets"},
        "MODEL": {"NAME": "resnet50", "NECK": "bnneck"},
        "SOLVER": {"BASE_LR": lr, "STEPS": steps, "MAX_EPOCHS": 30},
        "OUTPUT_DIR": str(out),  # differs in every run, never shown
    }


def _write_run(out: Path, config: dict, records: list[dict] | None) -> Path:
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    if records is not None:
        (out / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return out


def _reid(epoch: int, dataset: str, m_ap: float, rank1: float, **extra) -> dict:
    return {
        "epoch": epoch,
        "iteration": 100 * epoch,
        "dataset": dataset,
        "protocol": "reid",
        "mAP": m_ap,
        "rank1": rank1,
        "rank5": 0.9,
        "mINP": 0.1,
        **extra,
    }


def _retrieval(epoch: int, r1: float, map_r: float, nmi: float) -> dict:
    return {
        "epoch": epoch,
        "dataset": "cub",
        "protocol": "retrieval",
        "R@1": r1,
        "R@2": r1 + 0.1,
        "R@4": r1 + 0.2,
        "MAP@R": map_r,
        "R-precision": 0.3,
        "NMI": nmi,
    }


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    logs = tmp_path / "logs"
    market = logs / "reid" / "market"
    _write_run(
        market,
        _config(market, "market1501", 0.00035, [40, 70]),
        [
            _reid(10, "market1501", 0.5012, 0.7004),
            _reid(20, "market1501", 0.6125, 0.8013),
            _reid(30, "market1501", 0.5988, 0.8207),
        ],
    )
    duke = logs / "reid" / "duke"
    # Resumed from the epoch-10 checkpoint after epoch 20 was evaluated: the second epoch-20 line wins. The
    # stale best_mAP fields are the trainer's and must not be trusted.
    _write_run(
        duke,
        _config(duke, "dukemtmc", 0.00035, [40, 70]),
        [
            _reid(10, "dukemtmc", 0.40, 0.60, best_mAP=0.40, best_epoch=10),
            _reid(20, "dukemtmc", 0.49, 0.66, best_mAP=0.49, best_epoch=20),
            _reid(20, "dukemtmc", 0.47, 0.68, best_mAP=0.47, best_epoch=20),
            _reid(30, "dukemtmc", 0.46, 0.70, best_mAP=0.47, best_epoch=20),
        ],
    )
    msmt = logs / "reid" / "msmt"
    _write_run(msmt, _config(msmt, "msmt17", 0.0007, [40, 70]), None)  # no evaluation yet
    cub = logs / "dml" / "cub"
    _write_run(
        cub,
        _config(cub, "cub", 1e-05, [20, 40]),
        [
            _retrieval(5, 0.55, 0.20, 0.50),
            _retrieval(10, 0.62, 0.25, 0.55),
            _retrieval(15, 0.61, 0.24, 0.56),
        ],
    )
    # Inside a run folder (not searched) and a folder without a run: neither is a row.
    (market / "nested").mkdir()
    (market / "nested" / "config.yaml").write_text(yaml.safe_dump(_config(market, "sop", 1.0, [1])))
    (logs / "notes").mkdir()
    (logs / "notes" / "readme.txt").write_text("not a run\n")
    return logs


EXPECTED_MARKDOWN = """\
| run         | DATASETS.NAMES | SOLVER.BASE_LR | SOLVER.STEPS | dataset    |   mAP | rank-1 | best mAP | best mAP epoch | rank-1 at best |   R@1 | MAP@R | best R@1 | best R@1 epoch |   NMI | epochs |
| ----------- | -------------- | -------------- | ------------ | ---------- | ----: | -----: | -------: | -------------: | -------------: | ----: | ----: | -------: | -------------: | ----: | -----: |
| dml/cub     | cub            | 1e-05          | [20, 40]     | cub        |       |        |          |                |                | 61.00 | 24.00 |    62.00 |             10 | 56.00 |     15 |
| reid/duke   | dukemtmc       | 0.00035        | [40, 70]     | dukemtmc   | 46.00 |  70.00 |    47.00 |             20 |          68.00 |       |       |          |                |       |     30 |
| reid/market | market1501     | 0.00035        | [40, 70]     | market1501 | 59.88 |  82.07 |    61.25 |             20 |          80.13 |       |       |          |                |       |     30 |
| reid/msmt   | msmt17         | 0.0007         | [40, 70]     |            |       |        |          |                |                |       |       |          |                |       |        |
"""


def test_markdown_table(sweep: Path):
    assert summarize_mod.summarize([sweep]) == EXPECTED_MARKDOWN
    assert summarize_mod.summarize([sweep], "markdown", []) == EXPECTED_MARKDOWN


def test_csv_table(sweep: Path):
    text = summarize_mod.summarize([sweep], "csv")
    reader = csv.DictReader(io.StringIO(text))
    assert reader.fieldnames == [
        "run",
        "DATASETS.NAMES",
        "SOLVER.BASE_LR",
        "SOLVER.STEPS",
        "dataset",
        "mAP",
        "rank-1",
        "best mAP",
        "best mAP epoch",
        "rank-1 at best",
        "R@1",
        "MAP@R",
        "best R@1",
        "best R@1 epoch",
        "NMI",
        "epochs",
    ]
    rows = {row["run"]: row for row in reader}
    assert list(rows) == ["dml/cub", "reid/duke", "reid/market", "reid/msmt"]
    assert rows["reid/duke"] == {
        "run": "reid/duke",
        "DATASETS.NAMES": "dukemtmc",
        "SOLVER.BASE_LR": "0.00035",
        "SOLVER.STEPS": "[40, 70]",
        "dataset": "dukemtmc",
        "mAP": "46.00",
        "rank-1": "70.00",
        "best mAP": "47.00",
        "best mAP epoch": "20",
        "rank-1 at best": "68.00",
        "R@1": "",
        "MAP@R": "",
        "best R@1": "",
        "best R@1 epoch": "",
        "NMI": "",
        "epochs": "30",
    }
    cub = rows["dml/cub"]
    assert (cub["R@1"], cub["MAP@R"], cub["best R@1"], cub["best R@1 epoch"], cub["NMI"], cub["epochs"]) == (
        "61.00",
        "24.00",
        "62.00",
        "10",
        "56.00",
        "15",
    )
    assert cub["mAP"] == cub["rank-1"] == cub["best mAP"] == ""
    assert (rows["reid/market"]["mAP"], rows["reid/market"]["best mAP"], rows["reid/market"]["rank-1 at best"]) == (
        "59.88",
        "61.25",
        "80.13",
    )
    assert set(rows["reid/msmt"].values()) == {"reid/msmt", "msmt17", "0.0007", "[40, 70]", ""}
    assert text.count("\n") == 5 and "\r" not in text


def test_find_runs_parent_search_and_dedup(sweep: Path):
    expected = [sweep / "dml/cub", sweep / "reid/duke", sweep / "reid/market", sweep / "reid/msmt"]
    expected = [path.resolve() for path in expected]
    assert summarize_mod.find_runs([sweep]) == expected
    # Overlapping arguments (a run, its parent, a file of a run) give each run once, still sorted.
    assert summarize_mod.find_runs([sweep / "reid/market", sweep, sweep / "dml/cub/metrics.jsonl"]) == expected
    assert summarize_mod.find_runs([str(sweep / "reid")]) == expected[1:]
    # A run folder given directly is taken as it is (its nested/ folder is not a run).
    assert summarize_mod.find_runs([sweep / "reid/market"]) == [expected[2]]


def test_single_run_and_subset_names(sweep: Path):
    # One run: no key differs, its name is its folder; a subset: names relative to the subset's common parent.
    text = summarize_mod.summarize([sweep / "reid/market"], "csv")
    assert text.splitlines() == [
        "run,dataset,mAP,rank-1,best mAP,best mAP epoch,rank-1 at best,epochs",
        "market,market1501,59.88,82.07,61.25,20,80.13,30",
    ]
    text = summarize_mod.summarize([sweep / "reid"], "csv")
    assert [row["run"] for row in csv.DictReader(io.StringIO(text))] == ["duke", "market", "msmt"]
    # Retrieval only: no re-ID columns.
    header = summarize_mod.summarize([sweep / "dml"], "csv").splitlines()[0]
    assert header == "run,dataset,R@1,MAP@R,best R@1,best R@1 epoch,NMI,epochs"


def test_keys_adds_equal_keys(sweep: Path):
    text = summarize_mod.summarize([sweep / "reid"], "csv", ["MODEL.NAME", "SOLVER.BASE_LR"])
    reader = csv.DictReader(io.StringIO(text))
    # Config order (DATASETS, MODEL, SOLVER as in config.yaml), not the order of --keys.
    assert reader.fieldnames[:4] == ["run", "DATASETS.NAMES", "MODEL.NAME", "SOLVER.BASE_LR"]
    assert {row["MODEL.NAME"] for row in reader} == {"resnet50"}
    # A section stands for all its keys; OUTPUT_DIR can be asked for explicitly.
    header = summarize_mod.summarize([sweep / "reid"], "csv", ["MODEL", "OUTPUT_DIR"]).splitlines()[0].split(",")
    assert header[:5] == ["run", "DATASETS.NAMES", "MODEL.NAME", "MODEL.NECK", "OUTPUT_DIR"]
    with pytest.raises(SummaryError, match="MODEL.NMAE"):
        summarize_mod.summarize([sweep], "csv", ["MODEL.NMAE"])


def test_flatten_and_differing_keys():
    nested = {
        "MODEL": {"NAME": "resnet50", "EXTRA": {}},
        "SOLVER": {"BASE_LR": 0.00035, "STEPS": [40, 70]},
        "OUTPUT_DIR": "a",
    }
    flat = summarize_mod.flatten_config(nested)
    assert flat == {
        "MODEL.NAME": "resnet50",
        "MODEL.EXTRA": {},
        "SOLVER.BASE_LR": 0.00035,
        "SOLVER.STEPS": [40, 70],
        "OUTPUT_DIR": "a",
    }
    assert list(flat) == ["MODEL.NAME", "MODEL.EXTRA", "SOLVER.BASE_LR", "SOLVER.STEPS", "OUTPUT_DIR"]
    assert summarize_mod.flatten_config(flat) == flat
    assert summarize_mod.flatten_config(yaml.safe_dump(nested, sort_keys=False)) == flat
    assert summarize_mod.flatten_config(None) == {}
    other = {
        "MODEL": {"NAME": "resnet50", "EXTRA": {}},
        "SOLVER": {"BASE_LR": 0.00035, "STEPS": [40, 60]},
        "OUTPUT_DIR": "b",
        "SEED": 1,
    }
    # SEED is missing from the first config, so it differs; OUTPUT_DIR is ignored.
    assert summarize_mod.differing_keys([nested, other]) == ["SOLVER.STEPS", "SEED"]
    assert summarize_mod.differing_keys([nested, nested]) == []
    assert summarize_mod.differing_keys([flat, summarize_mod.flatten_config(other)]) == ["SOLVER.STEPS", "SEED"]
    assert summarize_mod.format_value([[256, 128], True, None]) == "[[256, 128], true, null]"


def test_test_metrics_and_mixed_protocols(tmp_path: Path):
    run = _write_run(
        tmp_path / "vehicle",
        _config(tmp_path, "vehicleid", 0.001, [10]),
        [
            _reid(5, "market1501", 0.3, 0.5),
        ],
    )
    # test.py's several-dataset form; the cub result has no training line, so it gets its own row.
    (run / "test_metrics.json").write_text(
        json.dumps(
            {
                "weight": "best.pt",
                "datasets": [
                    {"dataset": "market1501", "protocol": "reid", "mAP": 0.3312, "rank1": 0.5521},
                    {"dataset": "cub", "protocol": "retrieval", "R@1": 0.4, "MAP@R": 0.1},
                ],
            }
        )
    )
    rows = list(csv.DictReader(io.StringIO(summarize_mod.summarize([run], "csv"))))
    assert [
        (r["dataset"], r["mAP"], r["test mAP"], r["test rank-1"], r["test R@1"], r["test MAP@R"], r["epochs"])
        for r in rows
    ] == [("market1501", "30.00", "33.12", "55.21", "", "", "5"), ("cub", "", "", "", "40.00", "10.00", "5")]


def test_cut_metrics_line_is_skipped(tmp_path: Path):
    run = _write_run(tmp_path / "run", _config(tmp_path, "market1501", 0.1, [1]), [_reid(3, "market1501", 0.2, 0.3)])
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"epoch": 6, "dataset": "mark')  # killed while appending
    text = summarize_mod.summarize([run], "csv")
    assert text.splitlines()[1] == "run,market1501,20.00,30.00,20.00,3,30.00,3"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_cli_output_file_and_errors(sweep: Path, tmp_path: Path):
    out = tmp_path / "sweep.csv"
    proc = _cli("logs", "--format", "csv", "--output", str(out), cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""
    assert out.read_text() == summarize_mod.summarize([sweep], "csv")
    proc = _cli("logs/reid", "logs/dml", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout == EXPECTED_MARKDOWN
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.yaml").write_text("SOLVER: {BASE_LR: [1\n")  # a config cut mid-write
    (tmp_path / "listed").mkdir()
    (tmp_path / "listed" / "config.yaml").write_text("- 1\n- 2\n")
    for args in (
        ["missing"],
        ["logs/notes"],
        ["logs/notes/readme.txt"],
        ["logs", "--keys", "NOPE"],
        ["bad"],
        ["listed"],
        ["logs", "--output", "no/such/folder/out.md"],
    ):
        proc = _cli(*args, cwd=tmp_path)
        assert proc.returncode == 2, args
        assert proc.stdout == "" and "Traceback" not in proc.stderr
        assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("summarize.py: error: "), proc.stderr
    assert "missing: no such file or folder" in _cli("missing", cwd=tmp_path).stderr


def test_no_torch_import():
    code = (
        f"import sys, runpy; sys.argv = ['summarize.py', '--help']\n"
        f"try:\n    runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\nexcept SystemExit:\n    pass\n"
        f"assert 'torch' not in sys.modules, 'summarize.py imported torch'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "--format" in proc.stdout
