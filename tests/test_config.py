import math

import pytest
import yaml

from vq3d.cli import main
from vq3d.config import PRESETS, Config, ConfigError, from_dict, load_config, save_config, to_dict


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_round_trips_through_yaml(tmp_path, preset):
    cfg = load_config(preset)
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    assert from_dict(yaml.safe_load(path.read_text())) == cfg


def test_paper_preset_has_the_papers_sizes():
    cfg = load_config("paper")
    assert cfg.data.resolution == 256
    assert (cfg.model.plane_resolution, cfg.model.plane_channels) == (512, 32)
    assert (cfg.model.codebook_size, cfg.model.codebook_dim, cfg.model.commitment) == (8192, 32, 0.25)
    assert cfg.render.proposal_samples == (64, 64) and cfg.render.nerf_samples == 32
    assert (cfg.render.mlp_layers, cfg.render.mlp_hidden) == (2, 32)
    assert cfg.render.near == 0.2 and math.isinf(cfg.render.far)


def test_yaml_file_then_set_overrides(tmp_path):
    path = tmp_path / "over.yaml"
    path.write_text("preset: tiny\nrender:\n  nerf_samples: 5\n  proposal_samples: [3, 4]\n")
    cfg = load_config(None, [path], ["render.nerf_samples=7", "render.far=inf", "train.betas=[0.5, 0.6]"])
    assert cfg.preset == "tiny"
    assert cfg.render.proposal_samples == (3, 4)
    assert cfg.render.nerf_samples == 7
    assert math.isinf(cfg.render.far)
    assert cfg.train.betas == (0.5, 0.6)


def test_floats_in_exponent_notation_without_a_dot_are_numbers():
    cfg = load_config("tiny", overrides=["train.lr=2e-3", "loss.gan=1E-1"])  # strings to YAML 1.1
    assert cfg.train.lr == 2e-3 and cfg.loss.gan == 0.1
    with pytest.raises(ConfigError, match="train.lr"):
        load_config("tiny", overrides=["train.lr=fast"])


@pytest.mark.parametrize("override, fragment", [
    ("render.nope=1", "render.nope"),
    ("nope.x=1", "nope"),
    ("train.steps=abc", "train.steps"),
    ("train.steps=1.5", "train.steps"),
    ("render.stratified=maybe", "render.stratified"),
    ("render.contraction=l1", "render.contraction"),
    ("train.betas=[1]", "train.betas"),
    ("render.nerf_samples.x=1", "render.nerf_samples"),
    ("justakey", "section.key=value"),
])
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("[", r"\[")):
        load_config("tiny", [], [override])


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="preset"):
        load_config("huge")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("tiny", [tmp_path / "missing.yaml"])


def test_to_dict_is_plain_yaml():
    text = yaml.safe_dump(to_dict(Config()))
    assert "!!python" not in text


def test_cli_reports_config_errors_with_exit_code_2(capsys):
    assert main(["synth", "--out", "/nonexistent-dir-x", "--n", "0", "--res", "16"]) == 2
    assert "error" in capsys.readouterr().err


def test_run_configs_of_earlier_versions_load_without_their_retired_fields():
    values = to_dict(load_config("demo"))
    values["render"]["train_render_size"] = 0  # written by earlier versions, never used
    assert to_dict(from_dict(values)) == to_dict(load_config("demo"))
    del values["render"]["train_rays"], values["train"]["gan_batch_size"]  # added later: off for old runs
    with pytest.warns(UserWarning, match=r"lacks render\.train_rays, train\.gan_batch_size"):
        old = from_dict(values)  # and it says so
    assert old.render.train_rays == 0 and old.train.gan_batch_size == 0
    assert old.train.batch_size == values["train"]["batch_size"]
    values["render"]["no_such_field"] = 1  # anything else stays an error
    with pytest.raises(ConfigError, match="no_such_field"):
        from_dict(values)


def test_a_config_file_without_a_preset_says_it_starts_from_the_paper(tmp_path, recwarn):
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  steps: 5\n")
    with pytest.warns(UserWarning, match="names none: starting from the paper preset"):
        assert load_config(None, [path]).preset == "paper"
    recwarn.clear()
    assert load_config("demo", [path]).train.steps == 5 and not recwarn.list  # a preset given: quiet
    path.write_text("preset: demo\ntrain:\n  steps: 5\n")
    assert load_config(None, [path]).preset == "demo" and not recwarn.list
    assert from_dict(to_dict(load_config("demo"))) == load_config("demo") and not recwarn.list  # complete: quiet
