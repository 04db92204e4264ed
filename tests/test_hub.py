"""Hub-style runs (vq3d.models.hub, `vq3d export-run`): a tiny Stage-1 and Stage-2 run round-trip
bit-exactly through save_pretrained / from_pretrained without network, from a folder and from a
hub id in the local cache; commands take the folder in place of the run; a model not there is a
clear error; the model card holds the preset, data, steps and held-out metrics."""

import json
import shutil

import huggingface_hub
import pytest
import torch

from vq3d.cli import main
from vq3d.errors import UserError
from vq3d.models.gpt import GPT
from vq3d.models.stage1 import Stage1Model
from vq3d.train.runs import load_stage1
from vq3d.train.stage2 import load_stage2


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    data, s1, tok, s2 = root / "data", root / "s1", root / "tok", root / "s2"
    assert main(["synth", "--out", str(data), "--n", "20", "--res", "16", "--views", "1", "--no-progress"]) == 0
    # two ids a token, so the exports carry Stage 2's one position a token (the pipeline tests run one id)
    assert main(["train", "stage1", "--preset", "tiny", "--data", str(data), "--out", str(s1), "--set",
                 "train.steps=4", "--set", "train.ema_decay=0.5", "--set", "model.codebook_groups=2"]) == 0
    assert main(["tokens", "--stage1", str(s1), "--data", str(data), "--out", str(tok)]) == 0
    assert main(["train", "stage2", "--stage1", str(s1), "--tokens", str(tok), "--out", str(s2),
                 "--steps", "3", "--set", "stage2.group_ids=position"]) == 0
    return {"data": data, "s1": s1, "s2": s2, "tok": tok, "root": root}


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_stage1_run_round_trips_bit_exactly_with_its_card(runs, capsys):
    out = runs["root"] / "export1"
    assert main(["export-run", str(runs["s1"]), "--out", str(out), "--eval-data", str(runs["data"]),
                 "--max-scenes", "2"]) == 0
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json", "class_index.json", "README.md"}
    trained, cfg = load_stage1(runs["s1"])  # the EMA weights, as every command uses them
    loaded = Stage1Model.from_pretrained(out)
    assert _same_weights(trained, loaded) and loaded.cfg == cfg
    card = (out / "README.md").read_text()
    assert "library_name: vq3d" in card and "`tiny`" in card and "| steps | 4 |" in card
    assert "| psnr |" in card and "--eval-data" not in card.split("## Use")[0].replace("Held-out", "")
    assert json.loads((out / "class_index.json").read_text()) == json.loads((runs["s1"] / "class_index.json").read_text())
    # commands take the folder for the run: the same numbers
    capsys.readouterr()
    for run in (runs["s1"], out):
        assert main(["eval", "stage1", "--run", str(run), "--data", str(runs["data"]), "--json"]) == 0
    first, second = (json.loads(line) for line in capsys.readouterr().out.strip().splitlines())
    assert first["psnr"] == second["psnr"] and first["novel_view_psnr"] == second["novel_view_psnr"]
    assert main(["export-run", str(runs["s1"]), "--out", str(out)]) == 2  # never over an export
    # refining the export uses the run's learned logit-Laplace scale, as refining the run does
    from vq3d.refine import Refiner

    from_run, from_export = Refiner(trained, runs["s1"]), Refiner(loaded, out)
    assert from_export.logit_laplace_source == "export meta"
    assert torch.equal(from_run.logit_laplace.log_scale, from_export.logit_laplace.log_scale)
    assert float(from_run.logit_laplace.log_scale.abs().sum()) > 0  # learned, not b = 1


def test_a_stage2_run_round_trips_and_generates_from_exports(runs, tmp_path):
    s1_out, s2_out = runs["root"] / "export1b", runs["root"] / "export2"
    assert main(["export-run", str(runs["s1"]), "--out", str(s1_out)]) == 0
    assert main(["export-run", str(runs["s2"]), "--out", str(s2_out)]) == 0
    trained, cfg, meta = load_stage2(runs["s2"])
    loaded = GPT.from_pretrained(s2_out)
    assert _same_weights(trained, loaded) and loaded.hub_cfg == cfg
    assert loaded.hub_meta["codebook_hash"] == meta["codebook_hash"]
    assert meta["ids_per_token"] == loaded.ids_per_token == 2 and loaded.positions == loaded.seq_len // 2
    assert "No held-out metrics" in (s1_out / "README.md").read_text()
    assert main(["generate", "--stage1", str(s1_out), "--stage2", str(s2_out), "-n", "1", "--out",
                 str(tmp_path / "gen"), "--frames", "2"]) == 0


def test_a_two_id_run_made_before_the_layout_key_loads_and_resumes_as_trained(runs, tmp_path):
    run = tmp_path / "old"
    train = ["train", "stage2", "--stage1", str(runs["s1"]), "--tokens", str(runs["tok"]), "--out", str(run)]
    assert main([*train, "--steps", "2", "--set", "stage2.group_ids=sequence"]) == 0
    # what such a run holds: no ids_per_token in stage2.json, no group_ids in config.yaml
    meta = json.loads((run / "stage2.json").read_text())
    assert meta.pop("ids_per_token") == 1
    (run / "stage2.json").write_text(json.dumps(meta))
    config = (run / "config.yaml").read_text()
    assert "group_ids: sequence" in config
    old_config = "\n".join(line for line in config.splitlines() if "group_ids" not in line)
    (run / "config.yaml").write_text(old_config)
    model, _, _ = load_stage2(run)
    assert model.ids_per_token == 1 and model.positions == model.seq_len
    assert main([*train, "--resume", "--steps", "3"]) == 0
    kept = (run / "config.yaml").read_text(), (run / "stage2.json").read_text()
    # another layout on resume is refused before the folder is touched
    assert main([*train, "--resume", "--steps", "4", "--set", "stage2.group_ids=position"]) == 2
    assert ((run / "config.yaml").read_text(), (run / "stage2.json").read_text()) == kept
    assert load_stage2(run)[0].ids_per_token == 1


def test_a_hub_id_loads_from_the_local_cache_only(runs, tmp_path, monkeypatch):
    export = runs["root"] / "export-cache"
    assert main(["export-run", str(runs["s1"]), "--out", str(export)]) == 0
    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--vq3d-tiny" / "snapshots" / "0123456789abcdef"
    shutil.copytree(export, snapshot)  # the layout huggingface_hub's cache has
    (cache / "models--someone--vq3d-tiny" / "refs").mkdir()
    (cache / "models--someone--vq3d-tiny" / "refs" / "main").write_text("0123456789abcdef")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, _ = load_stage1("someone/vq3d-tiny")
    assert _same_weights(model, Stage1Model.from_pretrained(export))
    with pytest.raises(UserError, match="downloads nothing"):
        load_stage1("someone/not-there")
    with pytest.raises(UserError, match="not a stage1 model|not a vq3d run folder"):
        load_stage1(runs["root"] / "export2" if (runs["root"] / "export2").is_dir() else tmp_path)
