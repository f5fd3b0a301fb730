"""Fine-tuning: frozen parameters per mode, the promotion gate, skips, and the pointer CAS.

The labelled images are real photos (scikit-image / scikit-learn samples) tinted red or blue, as
PNG files in the ``{class}/`` layout of a local storage root: a class that any random crop
shows, so that a few CPU steps learn it. Every model is a seeded resnet18 made here.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from rstream.shared.errors import (
    ConfigError,
    NotFoundError,
    PermanentError,
    PreconditionFailed,
)
from rstream.shared.models.registry import Registry
from rstream.shared.settings import Settings
from rstream.shared.storage import Storage
from rstream.shared.training.config import TrainConfig
from rstream.shared.training.runs import run_report
from rstream.shared.training.splits import is_validation
from rstream.worker.finetune import dataset
from rstream.worker.finetune.loop import prepare
from rstream.worker.finetune.optimizer import make_optimizer
from rstream.worker.finetune.run import gate, run_finetune
from rstream.worker.model.loader import load_model, load_version, save_model
from rstream.worker.model.preprocess import Preprocessing
from tests.images import photo
from tests.settings import make_settings

START = "random:resnet18:classes=2:seed=0"
FAST = {"epochs": 1, "batch_size": 8, "resize": 36, "crop": 32, "val_percent": 25}
# Reaches 1.0 on the tints with seeds 0-3. (3 epochs did before the warm-up and the cosine
# decay, which spend the first and the last epochs at a low rate.)
LEARNS = {**FAST, "epochs": 6, "patience": 0}
TINTS = {"blue": (0.25, 0.25, 1.0), "red": (1.0, 0.25, 0.25)}
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "china", "flower")
PER_CLASS = 16

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def render_tints(root: Path) -> None:
    """PER_CLASS photos per tint, 40-64 px wide, as PNG files in ``root/train/{tint}/``."""
    for label, tint in TINTS.items():
        folder = root / "train" / label
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):
            rgb = photo(PHOTOS[i % len(PHOTOS)], (40 + 8 * (i // len(PHOTOS)), 40)).convert("RGB")
            pixels = np.asarray(rgb, dtype=np.float32) * np.array(tint, dtype=np.float32)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:03d}.png")


@pytest.fixture
def env(tmp_path: Path) -> tuple[Settings, Storage, Registry]:
    root = tmp_path / "root"
    render_tints(root)
    settings = make_settings(storage_root=str(root))
    storage = Storage(settings)
    return settings, storage, Registry(storage, settings.models)


def publish_untrained(registry: Registry, promote: bool = True) -> str:
    """An untrained resnet18 for the tints, published (and promoted) as ``tints``."""
    model = load_model(START)
    version = save_model(registry, "tints", model.module, arch="resnet18", classes=list(TINTS),
                         preprocessing=Preprocessing(resize=36, crop=32),
                         extra={"fingerprint": "older data"})
    if promote:
        registry.promote("tints", version, "test set-up")
    return version


def tensor_bytes(state: dict[str, torch.Tensor]) -> dict[str, bytes]:
    return {k: v.detach().cpu().contiguous().numpy().tobytes() for k, v in state.items()}


def changed_keys(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    assert before.keys() == after.keys()
    old, new = tensor_bytes(before), tensor_bytes(after)
    return {k for k in old if old[k] != new[k]}


@pytest.mark.parametrize(("mode", "trainable"), [
    ("feature-extract", ("fc.",)),
    ("finetune", ("fc.", "layer4.")),
])
def test_training_changes_only_the_trainable_blocks_buffers_included(
        env: tuple[Settings, Storage, Registry], mode: str, trainable: tuple[str, ...]) -> None:
    settings, storage, registry = env
    version = publish_untrained(registry)
    before = load_version(registry, "tints", version).module.state_dict()

    result = run_finetune(settings, storage, registry, "tints", TrainConfig(mode=mode, **FAST))

    after = load_version(registry, "tints", result["version"]).module.state_dict()
    changed = changed_keys(before, after)
    assert changed, "training changed nothing"
    assert {k for k in changed if not k.startswith(trainable)} == set()
    assert any(k.startswith("fc.") for k in changed)
    if mode == "finetune":  # layer4's BatchNorm trains, so its running stats move
        assert "layer4.1.bn2.running_mean" in changed
        assert "layer4.1.conv2.weight" in changed


def test_finetune_optimizer_groups_carry_the_two_learning_rates() -> None:
    module = load_model(START).module
    config = TrainConfig(mode="finetune", lr_fc=0.02, lr_layer4=0.003)
    optimizer = make_optimizer(prepare(module, 2, False, config), config)

    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert lrs == {"fc": 0.02, "layer4": 0.003}
    in_groups = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trainable = {id(p) for p in module.parameters() if p.requires_grad}
    expected = {id(p) for name, p in module.named_parameters()
                if name.startswith(("fc.", "layer4."))}
    assert in_groups == trainable == expected
    assert all(group["momentum"] == 0.9 for group in optimizer.param_groups)


def test_feature_extract_trains_a_new_fc_alone() -> None:
    module = load_model(START).module
    old_fc = module.fc
    config = TrainConfig(mode="feature-extract")
    optimizer = make_optimizer(prepare(module, 3, False, config), config)

    assert module.fc is not old_fc and module.fc.out_features == 3
    assert {group["name"] for group in optimizer.param_groups} == {"fc"}
    assert {n for n, p in module.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}


def test_a_better_candidate_is_promoted(env: tuple[Settings, Storage, Registry]) -> None:
    settings, storage, registry = env
    untrained = publish_untrained(registry)

    result = run_finetune(settings, storage, registry, "tints",
                          TrainConfig(mode="finetune", **LEARNS))

    assert result["status"] == "promoted", result
    assert result["val_accuracy"] == 1.0 > result["production_accuracy"]
    assert registry.production("tints") == result["version"]
    pointer = registry.read_pointer("tints")[0]
    assert pointer is not None and pointer["previous"] == [untrained]
    meta = registry.read_meta("tints", result["version"])
    assert meta["parent"] == f"tints@{untrained}"  # it started from production
    assert meta["gate"]["passed"] is True and meta["gate"]["production_version"] == untrained
    # the confusion matrix is of the split the gate scored: its diagonal is per_class correct
    confusion, per_class = meta["metrics"]["confusion"], meta["metrics"]["per_class"]
    assert meta["metrics"]["classes"] == list(TINTS) == result["classes"]
    assert [row[i] for i, row in enumerate(confusion)] == [per_class[c]["correct"] for c in TINTS]
    assert [sum(row) for row in confusion] == [per_class[c]["count"] for c in TINTS]
    assert len(result["history"]) == LEARNS["epochs"] == len(meta["training"]["history"])
    report = run_report("train-x", {"status": result["status"], **result}).splitlines()
    epochs = [line for line in report if line.split()[:1] and line.split()[0].isdigit()]
    assert len(epochs) == LEARNS["epochs"] and epochs[result["best_epoch"] - 1].endswith("*")
    assert report[-2].split()[:3] == ["blue", str(confusion[0][0]), str(confusion[0][1])]
    was = result["production_per_class"]["blue"]  # the untrained one, on the same split
    assert report[-2].endswith(f"{was['correct'] / was['count']:.4f} "
                               f"({was['correct']}/{was['count']})")


def test_a_candidate_that_loses_the_promotion_race_says_so_in_its_meta(
        env: tuple[Settings, Storage, Registry]) -> None:
    settings, storage, registry = env
    publish_untrained(registry)
    rival = publish_untrained(registry, promote=False)

    def promote_rival_once(epoch: int, step: int, loss: float) -> None:
        if registry.production("tints") != rival:  # another promoter wins while this trains
            registry.promote("tints", rival, "a rival")

    result = run_finetune(settings, storage, registry, "tints",
                          TrainConfig(mode="finetune", **LEARNS), progress=promote_rival_once)

    assert result["status"] == "trained" and "production changed" in result["reason"]
    assert registry.production("tints") == rival
    gate = registry.read_meta("tints", result["version"])["gate"]
    assert gate["passed"] is True and gate["promoted"] is False
    assert "production changed" in gate["reason"]


def swapped_training_labels(storage: Storage, settings: Settings) -> str:
    """A labels manifest of the same images, training labels swapped, validation ones right."""
    lines = []
    for item in dataset.list_labelled(storage, settings.train_data):
        label = item.label
        if not is_validation(item.uri, FAST["val_percent"]):
            label = "red" if label == "blue" else "blue"
        lines.append(json.dumps({"uri": item.uri, "label": label}))
    storage.write("swapped.jsonl", "\n".join(lines).encode())
    return "swapped.jsonl"


def test_a_worse_candidate_is_published_not_promoted(
        env: tuple[Settings, Storage, Registry]) -> None:
    settings, storage, registry = env
    good = run_finetune(settings, storage, registry, "tints",
                        TrainConfig(mode="finetune", **LEARNS), start_ref=START)
    assert good["status"] == "promoted" and good["val_accuracy"] == 1.0, good
    mislabelled = make_settings(storage_root=settings.storage_root,
                                train_data=swapped_training_labels(storage, settings))

    result = run_finetune(mislabelled, storage, registry, "tints",
                          TrainConfig(mode="finetune", **LEARNS), start_ref=START)

    assert result["status"] == "trained", result
    assert result["val_accuracy"] < result["production_accuracy"] == 1.0
    assert registry.versions("tints") == sorted([good["version"], result["version"]])
    assert registry.production("tints") == good["version"]
    meta = registry.read_meta("tints", result["version"])
    assert meta["gate"]["passed"] is False
    assert meta["gate"]["reason"] == result["reason"]
    assert "published, not promoted" in result["reason"]


def test_accumulation_steps_the_optimizer_every_n_batches_and_reports_progress(
        env: tuple[Settings, Storage, Registry]) -> None:
    settings, storage, registry = env
    calls: list[tuple[int, int, float]] = []
    config = TrainConfig(mode="feature-extract", **{**FAST, "epochs": 2, "accumulation": 2})

    result = run_finetune(settings, storage, registry, "tints", config, start_ref=START,
                          progress=lambda *call: calls.append(call))

    meta = registry.read_meta("tints", result["version"])
    batches = -(-meta["training"]["train_images"] // FAST["batch_size"])
    steps = -(-batches // 2)  # a partial accumulation at the epoch's end still steps
    assert [(epoch, step) for epoch, step, _ in calls] == [
        (epoch, step) for epoch in (1, 2) for step in range(1, steps + 1)]
    assert all(loss > 0 for _, _, loss in calls)


def test_early_stopping_keeps_the_best_epoch(env: tuple[Settings, Storage, Registry]) -> None:
    settings, storage, registry = env
    still = TrainConfig(mode="feature-extract", lr_fc=0.0, **{**FAST, "epochs": 6, "patience": 2})

    result = run_finetune(settings, storage, registry, "tints", still, start_ref=START)

    assert (result["epochs_run"], result["best_epoch"]) == (3, 1)  # no epoch beat the first
    history = registry.read_meta("tints", result["version"])["training"]["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert len({h["select_loss"] for h in history}) == 1


def test_unchanged_data_and_options_skip_training_and_a_new_option_trains(
        env: tuple[Settings, Storage, Registry]) -> None:
    settings, storage, registry = env
    config = TrainConfig(mode="feature-extract", **FAST)
    first = run_finetune(settings, storage, registry, "tints", config, start_ref=START)
    assert first["status"] == "promoted"

    again = run_finetune(settings, storage, registry, "tints", config, start_ref=START)
    other_rate = run_finetune(settings, storage, registry, "tints",
                              dataclasses.replace(config, lr_fc=0.02), start_ref=START)

    assert again["status"] == "skipped"
    assert again["version"] == first["version"] and "unchanged" in again["reason"]
    assert other_rate["status"] in ("trained", "promoted"), other_rate
    assert other_rate["fingerprint"] != first["fingerprint"]
    assert registry.versions("tints") == sorted([first["version"], other_rate["version"]])
    meta = registry.read_meta("tints", first["version"])
    assert meta["data_fingerprint"] == registry.read_meta(
        "tints", other_rate["version"])["data_fingerprint"]


def test_the_fingerprint_leaves_out_only_what_does_not_change_learning() -> None:
    items = [dataset.LabelledImage("train/a/1.png", "a", "1")]
    base = TrainConfig()
    assert dataset.fingerprint(items, base.fingerprint_fields()) == dataset.fingerprint(
        items, dataclasses.replace(base, workers=4).fingerprint_fields())
    for change in ({"lr_fc": 0.02}, {"epochs": 11}, {"mode": "full"}, {"flip": 0.0},
                   {"crop_scale": (0.5, 1.0)}, {"seed": 1}):
        changed = dataclasses.replace(base, **change).fingerprint_fields()
        assert dataset.fingerprint(items, changed) != dataset.fingerprint(
            items, base.fingerprint_fields()), change


@pytest.mark.parametrize(("candidate", "production", "tolerance", "passed"), [
    (0.9, None, 0.0, True), (0.91, 0.9, 0.0, True), (0.9, 0.9, 0.0, False),
    (0.89, 0.9, 0.0, False), (0.9, 0.9, 0.01, True), (0.89, 0.9, 0.01, False)])
def test_the_gate_promotes_a_better_candidate_and_a_tie_keeps_production(
        candidate: float, production: float | None, tolerance: float, passed: bool) -> None:
    assert gate(candidate, production, tolerance)[0] is passed


def test_epochs_are_chosen_on_a_split_the_gate_does_not_see(
        env: tuple[Settings, Storage, Registry]) -> None:
    settings, storage, registry = env
    config = TrainConfig(mode="feature-extract", **{**FAST, "epochs": 2, "patience": 0})

    result = run_finetune(settings, storage, registry, "tints", config, start_ref=START)

    meta = registry.read_meta("tints", result["version"])
    items = dataset.list_labelled(storage, settings.train_data)
    splits = dataset.split(items, config.val_percent, config.select_percent)
    training = meta["training"]
    assert (training["train_images"], training["select_images"], training["val_images"]) == (
        len(splits.train), len(splits.select), len(splits.val))
    assert meta["metrics"]["val_images"] == len(splits.val)  # the gate scored the val split
    history = training["history"]
    best = max(history, key=lambda h: (h["select_accuracy"], -h["select_loss"]))
    assert training["best_epoch"] == best["epoch"]
    assert meta["metrics"]["select_accuracy"] == best["select_accuracy"]


def test_fingerprint_follows_uris_labels_and_contents(
        env: tuple[Settings, Storage, Registry]) -> None:
    settings, storage, _ = env
    items = dataset.list_labelled(storage, settings.train_data)
    original = dataset.fingerprint(items)
    assert dataset.fingerprint(list(reversed(items))) == original
    relabelled = [dataset.LabelledImage(items[0].uri, "red", items[0].tag), *items[1:]]
    assert items[0].label == "blue" and dataset.fingerprint(relabelled) != original
    storage.write(items[0].uri, storage.read(items[0].uri) + b"\0")  # size and ETag change
    assert dataset.fingerprint(dataset.list_labelled(storage, settings.train_data)) != original


def test_labels_come_from_class_folders_or_a_manifest(
        env: tuple[Settings, Storage, Registry]) -> None:
    settings, storage, _ = env
    storage.write("train/README.txt", b"beside the class folders")
    storage.write("train/red/.hidden.png", b"editor junk")
    storage.write("train/red/notes.txt", b"not an image")
    items = dataset.list_labelled(storage, settings.train_data)
    assert len(items) == 2 * PER_CLASS and {i.label for i in items} == set(TINTS)
    assert all(i.uri.startswith(f"train/{i.label}/") for i in items)
    lines = [{"uri": i.uri, "label": i.label.upper()} for i in items[::5]]
    storage.write("labels.jsonl", "\n".join(json.dumps(x) for x in lines).encode() + b"\n\n")

    from_manifest = dataset.list_labelled(storage, "labels.jsonl")

    assert [(i.uri, i.label) for i in from_manifest] == [(x["uri"], x["label"]) for x in lines]
    storage.write("bad.jsonl", b'{"uri": "train/red/000.png"}\n')
    with pytest.raises(PermanentError, match="row 1: no column 'label'"):
        dataset.list_labelled(storage, "bad.jsonl")


def test_labels_and_a_run_come_from_a_parquet_or_csv_table_with_named_columns(
        env: tuple[Settings, Storage, Registry]) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    settings, storage, registry = env
    folders = dataset.list_labelled(storage, settings.train_data)
    classes = sorted({i.label for i in folders})
    ids = [classes.index(i.label) for i in folders]  # a warehouse keeps integer classes
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"image": [i.uri for i in folders], "cls": ids,
                             "reviewer": ["a"] * len(folders)}), sink)
    storage.write("labels.parquet", sink.getvalue().to_pybytes())
    table = dataset.list_labelled(storage, "labels.parquet", uri_column="image",
                                  label_column="cls")
    assert [(i.uri, i.label, i.tag) for i in table] == [
        (i.uri, str(n), i.tag) for i, n in zip(folders, ids, strict=True)]
    config = TrainConfig(mode="finetune", **LEARNS)
    by_folder = dataset.split(folders, config.val_percent, config.select_percent)
    by_table = dataset.split(table, config.val_percent, config.select_percent)
    for part in ("train", "select", "val"):  # the same splits as from the folders
        assert [i.uri for i in getattr(by_table, part)] == [
            i.uri for i in getattr(by_folder, part)]
    result = run_finetune(dataclasses.replace(settings, train_data="labels.parquet"), storage,
                          registry, "tints", config, start_ref="random:resnet18:seed=0",
                          columns=("image", "cls"))
    assert result["status"] == "promoted" and result["classes"] == ["0", "1"], result
    meta = registry.read_meta("tints", result["version"])
    assert meta["training"]["val_images"] == len(by_table.val) > 0
    assert meta["training"]["select_images"] == len(by_table.select) > 0
    storage.write("labels.csv", ("url,label\n" + "".join(
        f"{i.uri},{i.label}\n" for i in folders[:3]) + f"{folders[3].uri},\n").encode())
    with pytest.raises(ConfigError, match=r"labels.csv: row 4, column 'label': no label"):
        dataset.list_labelled(storage, "labels.csv", uri_column="url")


def test_splits_are_stable_disjoint_and_the_gates_does_not_move(
        env: tuple[Settings, Storage, Registry]) -> None:
    many = [dataset.LabelledImage(f"train/x/{i}.png", "x", "1") for i in range(2000)]
    splits = dataset.split(many, 20, 10)
    assert 300 < len(splits.val) < 500 and 100 < len(splits.select) < 300
    assert len(splits.train) + len(splits.select) + len(splits.val) == 2000
    again = dataset.split(list(reversed(many)), 20, 10)
    assert again.val == splits.val[::-1] and again.select == splits.select[::-1]
    assert dataset.split(many, 20, 30).val == splits.val  # the gate's split stays put
    assert splits.val == [i for i in many if is_validation(i.uri, 20)]
    with pytest.raises(ConfigError, match="to select epochs"):
        dataset.split(many[:2], 20, 10)


def test_a_corrupt_training_image_is_left_out(env: tuple[Settings, Storage, Registry]) -> None:
    settings, storage, _ = env
    storage.write("train/red/broken.png", b"\x89PNG\r\n\x1a\n truncated")
    items = dataset.list_labelled(storage, settings.train_data)
    training = dataset.training_dataset(storage, items, list(TINTS), dataset.Augmentation(32),
                                        10_000)
    samples = [training[i] for i in range(len(items))]
    bad = [item.uri for item, s in zip(items, samples, strict=True) if s is None]
    assert bad == ["train/red/broken.png"]
    images, labels = dataset.collate(samples)
    assert images.shape == (2 * PER_CLASS, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == [0 if i.label == "blue" else 1 for i in items if i.uri != bad[0]]


# The production pointer: compare-and-set promote and rollback (no torch needed).

def publish_meta(registry: Registry, version: str) -> str:
    registry.storage.write(registry.meta_uri("m", version), b"{}")
    return version


V1, V2, V3 = "20260101T000000000000Z-0001", "20260102T000000000000Z-0002", \
    "20260103T000000000000Z-0003"


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    storage = Storage(make_settings(storage_root=str(tmp_path)))
    registry = Registry(storage, "models")
    for version in (V1, V2, V3):
        publish_meta(registry, version)
    return registry


def test_two_first_promoters_cannot_both_win(registry: Registry) -> None:
    seen = registry.read_pointer("m")
    assert seen == (None, None)
    registry.promote("m", V1, "first", current=seen)
    with pytest.raises(PreconditionFailed):
        registry.promote("m", V2, "second", current=seen)
    assert registry.production("m") == V1


def test_promoters_racing_with_the_same_stale_etag_only_one_wins(registry: Registry) -> None:
    registry.promote("m", V1)
    registry.promote("m", V2)
    stale = registry.read_pointer("m")
    registry.promote("m", V3, "racer a", current=stale)
    with pytest.raises(PreconditionFailed):
        registry.promote("m", V1, "racer b", current=stale)
    with pytest.raises(PreconditionFailed):
        registry.rollback("m", current=stale)
    pointer: dict[str, Any] = registry.read_pointer("m")[0]  # type: ignore[assignment]
    assert pointer["version"] == V3 and pointer["previous"] == [V1, V2]
    assert pointer["reason"] == "racer a"


def test_rollback_returns_to_the_previous_version(registry: Registry) -> None:
    for version in (V1, V2, V3):
        registry.promote("m", version)
    assert registry.rollback("m")["version"] == V2
    assert registry.production("m") == V2
    assert registry.rollback("m")["version"] == V1
    with pytest.raises(NotFoundError, match="no earlier production version"):
        registry.rollback("m")


def test_an_unpublished_version_cannot_be_promoted(registry: Registry) -> None:
    with pytest.raises(NotFoundError):
        registry.promote("m", "20260104T000000000000Z-0004")
    assert registry.read_pointer("m") == (None, None)
