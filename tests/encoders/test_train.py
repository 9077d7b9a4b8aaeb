"""Training on the demo catalogue: the run folder, the product-level split, and that the model learns."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from catalog.labels import LabelEncoder
from catalog.store import Catalog
from encoders.bundle import MultiModalModel
from encoders.train import TrainConfig, category_batches, latest_run, lr_factor, recall_at_k, train


def test_trained_model_beats_chance_on_held_out_products(trained_run):
    workspace, result = trained_run
    classes = len(LabelEncoder.from_json(workspace.labels_path))
    test = result.report["test"]
    chance = 1.0 / classes
    assert test["fused"]["n"] >= 20
    # the demo catalogue has 13 classes (chance 0.077); frozen pretrained backbones + heads do far better
    assert test["fused"]["accuracy"] >= 0.6 > 5 * chance
    assert test["text_only"]["accuracy"] >= 0.4
    assert test["image_only"]["accuracy"] >= 0.4
    # cross-modal alignment: a title finds its own listing's photos far above chance (10 / gallery size)
    assert test["title_to_photo_recall@10"] >= 3 * 10 / test["gallery_size"]


def test_run_folder_holds_checkpoints_metrics_report_and_split(trained_run):
    workspace, result = trained_run
    run = result.run_dir
    for name in ("config.json", "split.json", "metrics.json", "report.json", "report.md", "confusion_matrix.png",
                 "checkpoints/last.pt", "checkpoints/best.pt", "model/bundle.json"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    assert (run / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    split = json.loads((run / "split.json").read_text())
    catalog = Catalog(workspace.db_url, root=workspace.root)
    try:
        ids = catalog.listing_ids()
    finally:
        catalog.close()
    # every listing on exactly one side: a product's photos never appear in two splits
    assert sorted(split["split"]) == ids
    assert set(split["split"].values()) == {"train", "val", "test"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["history"]) == result.report["epochs_run"]
    assert metrics["best_epoch"] == result.report["best_epoch"]
    # the best bundle was copied into the workspace and reloads with the recorded backbones
    model = MultiModalModel.load(workspace.model_dir)
    assert model.fingerprint == result.report["fingerprint"]
    assert model.backbones["image"]["name"] == "mobilenet_v2" and model.backbones["image"]["pretrained"]
    assert model.backbones["text"]["name"] == "all-MiniLM-L6-v2"
    # late fusion (the default): expert weights fitted on validation, saved with the fusion head
    late = result.report["late_fusion"]
    assert len(late["expert_weights"]) == 3 and all(w > 0 for w in late["expert_weights"])
    assert 0 < late["val_complete_n"] <= sum(v == "val" for v in split["split"].values())
    assert model.fusion.expert_weights == pytest.approx(tuple(late["expert_weights"]))


def test_resume_continues_from_the_last_checkpoint(demo_workspace, tmp_path):
    shutil.copytree(demo_workspace.root, tmp_path / "ws")
    from core.workspace import Workspace

    workspace = Workspace.at(tmp_path / "ws")
    first = train(workspace, TrainConfig(model_config="tiny", epochs=2, patience=10, progress=False,
                                         allow_download=False, device="cpu"))
    assert [e["epoch"] for e in first.history] == [0, 1]
    config = json.loads((first.run_dir / "config.json").read_text())
    config["epochs"] = 4
    (first.run_dir / "config.json").write_text(json.dumps(config))
    resumed = train(workspace, resume="latest")
    assert resumed.run_dir == first.run_dir == latest_run(workspace.runs_dir)
    assert [e["epoch"] for e in resumed.history] == [0, 1, 2, 3]
    assert resumed.history[:2] == first.history


def test_recall_at_k_on_a_hand_computed_case():
    queries = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]], np.float32)
    # query 0 -> row 0 is its best match; query 1 -> true row 2 ranks 2nd; query 2 -> true row 0 ranks 3rd
    truth = np.array([0, 2, 0])
    assert recall_at_k(queries, gallery, truth, k=1) == pytest.approx(1 / 3)
    assert recall_at_k(queries, gallery, truth, k=2) == pytest.approx(2 / 3)
    assert recall_at_k(queries, gallery, truth, k=3) == pytest.approx(1.0)


def test_learning_rate_schedule_warms_up_then_decays_to_zero():
    assert lr_factor(0.0, 1, 10) < 0.01
    assert lr_factor(1.0, 1, 10) == pytest.approx(1.0)
    assert lr_factor(5.5, 1, 10) == pytest.approx(0.5)
    assert lr_factor(10.0, 1, 10) == pytest.approx(0.0, abs=1e-9)


def test_training_fits_the_lexical_branch_into_the_bundle(trained_run):
    workspace, result = trained_run
    lexical = result.report["lexical"]
    assert lexical["n"] > 0
    assert lexical["terms"] > 0 and all(0 <= lexical[k] <= 1 for k in ("words_only", "text_only", "fused"))
    model = MultiModalModel.load(workspace.model_dir)
    assert model.lexical is not None
    assert tuple(model.lexical.weights["fused"]) == pytest.approx(tuple(lexical["weights"]["fused"]))
    # served queries get the words: a typed query's probabilities differ from the head's alone
    text = model.encode_texts(["fridge freezer"])
    assert not np.allclose(model.classify(text, None, texts=["fridge freezer"]), model.classify(text, None))
    assert "Lexical branch" in (result.run_dir / "report.md").read_text()


def test_category_batches_cover_every_row_once_with_few_categories_each():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(6), 20)  # 6 categories of 20 rows
    rows = rng.permutation(len(y))
    batches = category_batches(rows, y, batch_size=16, classes_per_batch=2, rng=rng)
    assert sorted(np.concatenate(batches).tolist()) == sorted(rows.tolist())
    assert all(len(set(y[b].tolist())) <= 2 for b in batches)
    assert max(len(b) for b in batches) <= 16


def test_top_layer_features_match_the_frozen_backbones_and_training_updates_only_the_top_layers(
        demo_workspace, tmp_path):
    from core.workspace import Workspace
    from encoders.towers import build_towers, get_model_config
    from encoders.train import TopLayerFeatures, load_workspace_training_data

    shutil.copytree(demo_workspace.root, tmp_path / "ws")
    workspace = Workspace.at(tmp_path / "ws")
    # the top layer on the cached states below it gives what the whole backbone gives (states kept in float16)
    config = TrainConfig(model_config="tiny", progress=False, allow_download=False, device="cpu")
    labels = LabelEncoder.from_json(workspace.labels_path)
    data = load_workspace_training_data(workspace, labels, config)
    torch.manual_seed(0)
    image_tower, text_tower = build_towers(get_model_config("tiny"), allow_download=False)
    image_tower.eval(), text_tower.eval()
    features = TopLayerFeatures(data, image_tower, text_tower, workspace.feature_cache_dir, torch.device("cpu"),
                                text_layers=1, image_blocks=2, batch_size=16, progress=False)
    rows, title_only = np.arange(12), np.arange(12) % 2 == 0
    texts = [data.titles[r] if t else data.texts[r] for r, t in zip(rows, title_only)]
    with torch.no_grad():
        whole = text_tower.trunk(text_tower.prepare(texts))
        top = features.text_pooled(rows, title_only, train=False)
    assert torch.allclose(top, whole, atol=2e-2, rtol=1e-2)
    assert not torch.allclose(top[:1], whole[1:2], atol=2e-2)
    # and the top 2 image blocks on the cached feature maps below them give what the whole image backbone gives
    from encoders.train import load_photo

    photo_rows = np.arange(6)
    with torch.no_grad():
        whole = image_tower.trunk(image_tower.prepare([load_photo(data.photo_paths[i]) for i in photo_rows]))
        top = features.image_pooled(photo_rows, train=False)
    assert torch.allclose(top, whole, atol=2e-2, rtol=1e-2)
    assert not torch.allclose(top[:1], whole[1:2], atol=2e-2)

    # a run with every shared-space option: the top layer moves, the layers below it do not, and the saved
    # bundle's text tower encodes with the trained layer
    result = train(workspace, TrainConfig(model_config="tiny", epochs=2, patience=10, progress=False,
                                          allow_download=False, device="cpu", text_finetune_layers=1,
                                          image_finetune_blocks=1, photo_positives="all",
                                          category_batch_classes=2, queue_size=64, title_match_weight=0.5))
    model = MultiModalModel.load(workspace.model_dir)
    history = json.loads((result.run_dir / "metrics.json").read_text())["history"]
    assert all(epoch["train"]["title_match"] > 0 for epoch in history)  # the known-item loss ran

    def same(a, b) -> bool:
        return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

    for saved, initial in ((model.text_tower, text_tower), (model.image_tower, image_tower)):
        after, before = saved.backbone.blocks, initial.backbone.blocks
        assert same(after[0], before[0]) and not same(after[-1], before[-1])
    assert result.report["test"]["gallery_size"] > 0


@pytest.mark.parametrize("option", [["--photo-positives", "every"], ["--text-finetune-layers", "1",
                                                                      "--finetune-blocks", "1"]])
def test_train_refuses_inconsistent_shared_space_options_with_one_line(tmp_path, option):
    from typer.testing import CliRunner

    from marketsearch.cli import app

    result = CliRunner().invoke(app, ["train", *option, "--workspace", str(tmp_path / "ws")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and option[0][2:].replace("-", "_") in lines[0]
