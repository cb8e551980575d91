"""The quantum ablation command end to end on a tiny configuration, and its input validation."""

import json

from infogeom.cli import main


def test_quantum_ablation_cli_writes_table_json_and_plot(tmp_path, capsys):
    corpus = tmp_path / "text.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    out = tmp_path / "ablation.json"
    for task in ("bigram", "gpt"):
        rc = main(["quantum-ablation", "--task", task, "--corpus", str(corpus), "--seeds", "2",
                   "--steps", "4",
                   "--batch-size", "2", "--block-size", "8", "--n-qubits", "2", "--n-layers", "1",
                   "--n-embd", "4", "--recompute-every", "2", "--out", str(out)])
        assert rc == 0
        result = json.loads(out.read_text())
        assert set(result["summary"]) == {"adam", "qng-fs", "qng-pullback"}
        assert all(s["n"] == 2 and s["std"] >= 0 for s in result["summary"].values())
        by_seed = {(r["arm"], r["seed"]): r["final_val_loss"] for r in result["runs"]}
        paired = result["summary"]["qng-fs"]["paired_diff"]
        diffs = [by_seed["qng-fs", s] - by_seed["adam", s] for s in (0, 1)]
        assert paired["vs"] == "adam" and abs(paired["mean"] - sum(diffs) / 2) < 1e-12
        assert len(result["runs"]) == 6 and out.with_suffix(".png").exists()
    printed = capsys.readouterr().out
    assert "qng-pullback" in printed and "±" in printed


def test_quantum_ablation_bad_input(tmp_path, capsys):
    assert main(["quantum-ablation", "--seeds", "0", "--out", str(tmp_path / "x.json")]) == 2
    assert "infogeom: error:" in capsys.readouterr().err
