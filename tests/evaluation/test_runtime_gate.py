"""`marketsearch export-onnx`: graphs into the bundle with their int8 quality gates measured on the protocols."""

from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from core.workspace import Workspace
from evaluation.runtime_gate import agreement


def test_export_onnx_writes_graphs_and_gates_the_int8_ones(indexed_workspace, tmp_path):
    from marketsearch.cli import app

    workspace = Workspace.at(tmp_path / "ws")
    shutil.copytree(indexed_workspace.root, workspace.root)
    result = CliRunner().invoke(app, ["export-onnx", "--workspace", str(workspace.root), "--max-queries", "20"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((workspace.model_dir / "onnx" / "manifest.json").read_text())
    assert set(manifest["graphs"]) == {"text.fp32.onnx", "text.int8.onnx", "image.fp32.onnx", "image.int8.onnx"}
    for modality, allowed in (("text", 0.5), ("image", 1.0)):
        gate = manifest["gates"][modality]
        assert gate["queries"] == 20 and gate["max_drop_points"] == allowed
        assert abs(gate["drop_points"] - (gate["ndcg10_fp32"] - gate["ndcg10_int8"]) * 100) < 1e-9
        assert gate["passed"] == (gate["drop_points"] <= allowed)
        assert 0 < gate["top20_overlap"] <= 1
        assert f"int8 {modality}: " in result.output


def test_agreement_counts_shared_top_listings():
    fp32 = {"q1": {"a": 3.0, "b": 2.0, "c": 1.0}, "q2": {"a": 1.0, "b": 2.0}}
    int8 = {"q1": {"c": 3.0, "b": 2.0, "d": 1.0}, "q2": {"b": 5.0, "a": 4.0}}
    overlap, top1 = agreement(fp32, int8, k=2)
    assert overlap == (0.5 + 1.0) / 2  # q1: {a, b} vs {c, b}; q2: same two
    assert top1 == 0.5  # q1's first differs, q2's is b in both
