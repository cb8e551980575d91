"""``infogeom curvature`` end to end on tiny GPT and Hugging Face GPT-2 checkpoints: files written,
eigenvalues against the dense float64 Hessian of the checkpoint on the same batch, one-line errors with exit
code 2."""

import dataclasses
import json
import math

import pytest
import torch
from test_curvature_monitor import tiny_run_config
from test_hessian_operator import dense_hessian

from infogeom.cli import main
from infogeom.curvature import parameter_blocks
from infogeom.geometry import DenseOperator
from infogeom.train import load_model, train
from infogeom.train.checkpoint import list_checkpoints
from infogeom.train.modeling import prepare_run_data


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("curv_cli")
    cfg = dataclasses.replace(tiny_run_config(tmp, steps=6), ckpt_every=3, keep_last=2)
    train(cfg)
    return cfg, list_checkpoints(tmp / "run")


def test_cli_all_items_write_outputs_and_match_dense_oracle(run, tmp_path, capsys):
    cfg, (first, last) = run
    out = tmp_path / "out"
    argv = [
        "curvature",
        str(last),
        "--what",
        "eig,trace,density,blocks,sharpness,noise,landscape,interpolate",
        "--compare",
        str(first),
        "--batch-size",
        "2",
        "--k",
        "2",
        "--tol",
        "1e-5",
        "--probes",
        "6",
        "--lanczos-steps",
        "8",
        "--density-probes",
        "2",
        "--grid",
        "3",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    table = capsys.readouterr().out
    for key in (
        "hessian λ_1",
        "Hutch++",
        "block heterogeneity",
        "SAM",
        "adam λ_max(P⁻¹H)",
        "B_noise",
        "interpolation barrier",
    ):
        assert key in table
    for name in ("eig", "trace", "density", "blocks", "sharpness", "noise", "landscape", "interpolation"):
        assert (out / f"{name}.json").is_file()
    for name in ("density", "blocks", "landscape", "interpolation"):
        assert (out / f"{name}.png").stat().st_size > 1000
    model, _, _ = load_model(last)
    data = prepare_run_data(cfg.data)
    batch = data.get_batch("train", 2, cfg.data.block_size, torch.Generator().manual_seed(0))
    model = model.double()
    model.set_attention("math")
    evals = torch.linalg.eigvalsh(dense_hessian(model, batch))
    eig = json.loads((out / "eig.json").read_text())
    assert eig["converged"]
    for got, want in zip(eig["eigenvalues"], evals.flip(0)[:2].tolist()):
        assert math.isclose(got, want, rel_tol=1e-4)  # float32 checkpoint vs float64 oracle
    landscape = json.loads((out / "landscape.json").read_text())
    assert len(landscape["losses"]) == 3 and len(landscape["losses"][0]) == 3
    sharp = json.loads((out / "sharpness.json").read_text())
    assert sharp["optimizer"]["kind"] == "adam" and sharp["optimizer"]["threshold"] > 0


def test_cli_default_output_folder_is_next_to_checkpoint(run):
    _, (_, last) = run
    assert main(["curvature", str(last), "--what", "trace", "--batch-size", "2", "--probes", "4"]) == 0
    assert (last.parent / f"{last.stem}-curvature" / "trace.json").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--what", "eig,bogus"], "unknown --what item 'bogus'"),
        (["--what", " , "], "--what is empty"),
        (["--what", "interpolate"], "needs a second checkpoint"),
        (["--batch-size", "0"], "--batch-size must be a positive integer"),
        (["--tol", "-1"], "--tol must be positive"),
        (["--token-chunk", "0"], "--token-chunk must be a positive integer, auto or none"),
    ],
)
def test_cli_bad_input_is_one_line_error(run, tmp_path, capsys, argv, message):
    _, (_, last) = run
    assert main(["curvature", str(last), "--out", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("infogeom: error:") and message in err and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_cli_token_chunked_fisher_equals_unchunked(run, tmp_path):
    _, (_, last) = run
    eigs = []
    for chunk in ("5", "none"):
        out = tmp_path / chunk
        assert main(["curvature", str(last), "--what", "eig", "--operator", "fisher", "--token-chunk", chunk, "--k",
                     "1", "--batch-size", "2", "--budget", "0", "--out", str(out)]) == 0
        eigs.append(json.loads((out / "eig.json").read_text())["eigenvalues"][0])
        assert json.loads((out / "summary.json").read_text())["options"]["token_chunk"] == (
            5 if chunk == "5" else None)
    assert math.isclose(*eigs, rel_tol=1e-4)


def test_cli_missing_checkpoint(tmp_path, capsys):
    assert main(["curvature", str(tmp_path / "nope.pt"), "--what", "eig"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_cli_hugging_face_gpt2_checkpoint(tmp_path):
    base = tiny_run_config(tmp_path, steps=2)
    cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, arch="hf-gpt2"))
    train(cfg)
    ckpt = list_checkpoints(tmp_path / "run")[-1]
    out = tmp_path / "hf"
    assert (
        main(
            [
                "curvature",
                str(ckpt),
                "--what",
                "eig,blocks",
                "--granularity",
                "head",
                "--k",
                "1",
                "--batch-size",
                "2",
                "--lanczos-steps",
                "6",
                "--density-probes",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    eig = json.loads((out / "eig.json").read_text())
    assert eig["converged"] and eig["residuals"][0] <= 1e-3 * abs(eig["eigenvalues"][0])
    blocks = json.loads((out / "blocks.json").read_text())
    assert blocks["names"] == ["layer0.head0", "layer0.head1"]


def test_head_blocks_for_conv1d_layout():
    """HF GPT-2 Conv1D weights are [in, out]: head h owns columns of c_attn and rows of c_proj."""
    C, H, d = 8, 2, 4
    names = [
        "h.0.attn.c_attn.weight",
        "h.0.attn.c_attn.bias",
        "h.0.attn.c_proj.weight",
        "h.0.attn.c_proj.bias",
    ]
    shapes = [torch.Size([C, 3 * C]), torch.Size([3 * C]), torch.Size([C, C]), torch.Size([C])]
    op = DenseOperator(torch.eye(sum(s.numel() for s in shapes)), shapes, names)
    blocks = parameter_blocks(op, "head", n_head=H)
    idx = set(blocks["layer0.head1"].tolist())
    cols = [part * C + c for part in range(3) for c in range(d, 2 * d)]
    expected = {r * 3 * C + c for r in range(C) for c in cols}
    expected |= {3 * C * C + c for c in cols}
    expected |= {3 * C * C + 3 * C + r * C + c for r in range(d, 2 * d) for c in range(C)}
    assert idx == expected
