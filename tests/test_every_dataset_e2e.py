"""Every dataset trains and evaluates end to end with the BoT recipe (configs/softmax_triplet.yml), on tiny
trees in the official layouts (the loader tests' trees, with real pixels written into every image file)."""

import json
from pathlib import Path

import pytest

from config import load_config
from engine.training import train

# every test trains and evaluates end to end
pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]


def make_csv(root: Path) -> Path:
    rows = ["path,label,camid,split"]
    for split, labels, per in (("train", ("a", "b", "c"), 3), ("query", ("d", "e"), 1), ("gallery", ("d", "e"), 2)):
        for label in labels:
            for k in range(per):
                rows.append(f"img/{split}_{label}_{k}.jpg,{label},{k + (1 if split == 'query' else 2)},{split}")
                (root / "img").mkdir(parents=True, exist_ok=True)
                (root / "img" / f"{split}_{label}_{k}.jpg").touch()
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    return root / "data.csv"


# case -> (the tree fixture of tests/conftest.py that builds it, extra config keys)
BUILDERS = {
    "market1501": ("make_market_tree", {}),
    "dukemtmc": ("make_duke", {}),
    "msmt17": ("make_msmt17", {}),
    "vehicleid": ("make_vehicleid", {}),
    "vehicleid_reid": ("make_vehicleid", {"TEST.VEHICLEID_PROTOCOL": "reid", "TEST.VEHICLEID_TRIALS": "3"}),
    "cub": ("make_cub_tree", {}),
    "cub_nmi": ("make_cub_tree", {"TEST.NMI_RUNS": "2"}),
    "cars": ("make_cars_tree", {}),
    "sop": ("make_sop_tree", {}),
    "inshop": ("make_inshop_tree", {}),
    "folder": ("make_split_folders", {}),
}


@pytest.mark.parametrize("case", [*BUILDERS, "csv"])
def test_dataset_trains_and_evaluates_with_the_bot_recipe(case, tmp_path, request, fill_images):
    data_root = tmp_path / "data"
    data_root.mkdir()
    name = case.split("_")[0]
    extra = {}
    if case == "csv":
        extra["DATASETS.CSV_FILE"] = str(make_csv(data_root))
    else:
        builder, extra = BUILDERS[case]
        request.getfixturevalue(builder)(data_root)
    fill_images(data_root)
    out = tmp_path / "out"
    opts = {
        "DATASETS.NAMES": name,
        "DATASETS.ROOT_DIR": str(data_root),
        "MODEL.NAME": "resnet18",
        "MODEL.PRETRAIN_CHOICE": "none",
        "INPUT.SIZE_TRAIN": "[32, 16]",
        "INPUT.SIZE_TEST": "[32, 16]",
        "INPUT.RESIZE_TEST": "32",
        "SOLVER.IMS_PER_BATCH": "4",
        "DATALOADER.NUM_INSTANCE": "2",
        "DATALOADER.NUM_WORKERS": "0",
        "SOLVER.MAX_EPOCHS": "1",
        "OUTPUT_DIR": str(out),
        **extra,
    }
    result = train(load_config(ROOT / "configs/softmax_triplet.yml", [x for kv in opts.items() for x in kv]))
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["dataset"] == name and record == {**record, **result}
    main = "mAP" if record["protocol"] == "reid" else "R@1"
    assert 0.0 <= record[main] <= 1.0
    if record["protocol"] == "retrieval":
        assert "MAP@R" in record and "R-precision" in record
    if case == "vehicleid_reid":
        assert record["num_trials"] == 3
    if case == "cub_nmi":
        assert 0.0 <= record["NMI"] <= 1.0
    assert (out / "best.pt").is_file() and (out / "checkpoints/checkpoint_1.pt").is_file()


def test_several_datasets_train_together_and_are_evaluated_each(tmp_path, make_market_tree, make_duke, fill_images):
    data_root = tmp_path / "data"
    make_market_tree(data_root)
    make_duke(data_root)
    fill_images(data_root)
    out = tmp_path / "out"
    opts = [
        "DATASETS.NAMES",
        "('market1501', 'dukemtmc')",
        "DATASETS.ROOT_DIR",
        str(data_root),
        "MODEL.NAME",
        "resnet18",
        "MODEL.PRETRAIN_CHOICE",
        "none",
        "INPUT.SIZE_TRAIN",
        "[32, 16]",
        "INPUT.SIZE_TEST",
        "[32, 16]",
        "SOLVER.IMS_PER_BATCH",
        "4",
        "DATALOADER.NUM_INSTANCE",
        "2",
        "DATALOADER.NUM_WORKERS",
        "0",
        "SOLVER.MAX_EPOCHS",
        "1",
        "OUTPUT_DIR",
        str(out),
    ]
    train(load_config(ROOT / "configs/softmax_triplet.yml", opts))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["dataset"] for r in records] == ["market1501", "dukemtmc"]
    import torch

    classifier = torch.load(out / "checkpoints/checkpoint_1.pt", weights_only=True)["loss"][
        "cls_term.classifier.weight"
    ]
    assert classifier.shape[0] == 6 + 3  # Market's 6 train ids, then Duke's 3, labels offset

    only_duke = opts[:-2] + ["OUTPUT_DIR", str(tmp_path / "out2"), "TEST.DATASETS", "['dukemtmc']"]
    train(load_config(ROOT / "configs/softmax_triplet.yml", only_duke))
    records = [json.loads(line) for line in (tmp_path / "out2/metrics.jsonl").read_text().splitlines()]
    assert [r["dataset"] for r in records] == ["dukemtmc"]
