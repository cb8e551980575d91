"""Training configs: defaults, TOML files, overrides, validation of every number, TOML round trip."""

from dataclasses import fields

import pytest

from infogeom.errors import InfogeomError
from infogeom.models import GPT
from infogeom.train import TrainConfig, build_model, config_from_dict, dumps_toml, load_config
from infogeom.train.config import FIELD_HELP, SECTIONS


def test_defaults_are_a_valid_1m_parameter_char_gpt_on_shakespeare():
    cfg = load_config()
    assert cfg == TrainConfig()
    assert (cfg.data.corpus, cfg.data.tokenizer, cfg.optim.name, cfg.model.arch) == (
        "shakespeare", "char", "adamw", "gpt")
    model = build_model(cfg.model, vocab_size=65)  # Shakespeare's character set has 65 symbols
    assert isinstance(model, GPT) and 0.7e6 < model.num_parameters() < 1.3e6


def test_toml_file_then_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('max_steps = 300\nseed = 7\n[model]\nn_layer = 2\ndropout = 0.1\n'
                    '[data]\ncorpus = "pydoc"\nbatch_size = 16\n[optim]\nname = "sgd"\nlr = 1\n'
                    '[optim.options]\nmomentum = 0.9\n')
    cfg = load_config(path, ["optim.lr=0.5", "model.n_layer=3", "data.tokenizer=bpe:300",
                             "optim.options.nesterov=true", "out_dir='runs/x y'", "progress=false"])
    assert cfg.max_steps == 300 and cfg.seed == 7 and cfg.model.dropout == 0.1
    assert cfg.model.n_layer == 3 and cfg.data.corpus == "pydoc" and cfg.data.batch_size == 16
    assert cfg.optim.name == "sgd" and cfg.optim.lr == 0.5 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.options == {"momentum": 0.9, "nesterov": True}
    assert cfg.data.tokenizer == "bpe:300" and cfg.out_dir == "runs/x y" and cfg.progress is False


def test_toml_round_trip(tmp_path):
    cfg = load_config(None, ["optim.options.betas=[0.9, 0.99]", "optim.options.name='x'",
                             "model.norm=rmsnorm", "data.corpus=some/file.txt", "max_seconds=12.5"])
    path = tmp_path / "c.toml"
    path.write_text(dumps_toml(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize("overrides,match", [
    (["optim.lr=-1"], "optim.lr must be positive"),
    (["optim.lr=0"], "optim.lr must be positive"),
    (["optim.lr=nan"], "optim.lr must be positive"),
    (["data.block_size=0"], "data.block_size must be positive"),
    (["model.block_size=0", "data.block_size=0"], "block_size must be a positive"),
    (["data.batch_size=0"], "data.batch_size must be positive"),
    (["max_steps=0"], "max_steps must be positive"),
    (["max_steps=10"], r"optim.warmup_steps \(50\) exceeds max_steps \(10\)"),
    (["optim.warmup_steps=-1"], "optim.warmup_steps must be non-negative"),
    (["optim.weight_decay=-0.1"], "optim.weight_decay must be non-negative"),
    (["optim.grad_clip=-1"], "optim.grad_clip must be non-negative"),
    (["optim.min_lr=1"], r"optim.min_lr \(1.0\) exceeds optim.lr"),
    (["grad_accum=0"], "grad_accum must be positive"),
    (["eval_batches=0"], "eval_batches must be positive"),
    (["log_every=0"], "log_every must be positive"),
    (["keep_last=0"], "keep_last must be positive"),
    (["eval_every=-5"], "eval_every must be non-negative"),
    (["max_seconds=-1"], "max_seconds must be non-negative"),
    (["data.val_fraction=1"], "data.val_fraction must be strictly between 0 and 1"),
    (["data.val_fraction=0"], "data.val_fraction must be strictly between 0 and 1"),
    (["data.block_size=256"], r"data.block_size \(256\) exceeds model.block_size \(128\)"),
    (["model.n_head=3"], "divisible"),
    (["model.dropout=1.5"], "model.dropout"),
    (["model.norm=batchnorm"], "unknown model.norm"),
    (["model.arch=llama"], "unknown model.arch"),
    (["model.arch=hf-gpt2", "model.norm=rmsnorm"], "not available for arch 'hf-gpt2'"),
    (["data.corpus= "], "data.corpus is empty"),
    (["device=tpu9"], "unknown device"),
    (["max_steps=ten"], "max_steps must be an integer"),
    (["max_steps=1.5"], "max_steps must be an integer"),
    (["progress=maybe"], "progress must be true or false"),
    (["model.vocab_size=10"], "unknown config key model.vocab_size"),
    (["optim.momentum=0.9"], "unknown config key optim.momentum"),
    (["nonsense=1"], "unknown config key nonsense"),
    (["max_steps"], "expected section.key=value"),
])
def test_invalid_values_raise_one_line_errors(overrides, match):
    with pytest.raises(InfogeomError, match=match) as err:
        load_config(None, overrides)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text,match", [
    ("max_step = 3\n", "unknown config key max_step"),
    ("[model]\nlayers = 3\n", "unknown config key model.layers"),
    ("[training]\nx = 1\n", "unknown config key training"),
    ("model = 3\n", r"\[model\] must be a table"),
    ("[optim]\nlr = \"fast\"\n", "optim.lr must be a number"),
    ("[model]\nbias = 1\n", "model.bias must be true or false"),
    ("max_steps = 2.0\n", "max_steps must be an integer"),
    ("max_steps = \n", "not valid TOML"),
])
def test_bad_toml_files(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InfogeomError, match=match):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(InfogeomError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_config_from_dict_copies_its_base():
    base = TrainConfig()
    cfg = config_from_dict({"model": {"n_layer": 9}}, base=base)
    assert cfg.model.n_layer == 9 and base.model.n_layer == 4
    load_config(None, ["optim.options.momentum=0.5"], base=base)
    assert base.optim.options == {}


def test_every_key_is_documented():
    cfg = TrainConfig()
    keys = {f.name for f in fields(cfg) if f.name not in SECTIONS}
    keys |= {f"{s}.{f.name}" for s in SECTIONS for f in fields(getattr(cfg, s)) if f.name != "vocab_size"}
    assert keys == set(FIELD_HELP)
