"""Hub-style folders of trained models, through huggingface_hub's `ModelHubMixin`:

    DIR/model.safetensors   the weights (Stage 1: the EMA weights when the run kept them)
    DIR/config.json         {"vq3d_format", "kind": "stage1" | "stage2", "config": the resolved
                            config, "meta": what the model needs beside it (Stage 2: vocabulary,
                            sequence length, classes, the Stage-1 codebook's fingerprint)}
    DIR/class_index.json    class name -> id, when the model has classes
    DIR/README.md           the model card (`vq3d export-run` fills it)

`Stage1Model.from_pretrained(dir_or_hub_id)` / `model.save_pretrained(dir)`, and the same for the
Stage-2 `GPT`. Nothing is downloaded unless asked: `from_pretrained(..., local_files_only=False)`
may fetch a hub id; vq3d's own commands read local folders and the local hub cache only.
No pickle is ever loaded (safetensors and JSON).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from huggingface_hub import ModelHubMixin, snapshot_download
from safetensors.torch import load_model, save_model

from vq3d.config import Config, from_dict, to_dict
from vq3d.errors import UserError

FORMAT = 1
WEIGHTS, CONFIG, CLASS_INDEX = "model.safetensors", "config.json", "class_index.json"

MODEL_CARD = """---
{{ card_data }}
---

# {{ title }}

A {{ kind_text }} of vq3d, a PyTorch implementation of VQ3D (Sargent et al., ICCV 2023):
{{ kind_summary }}

| | |
| --- | --- |
| preset | `{{ preset }}` |
| training data | {{ data }} |
| steps | {{ steps }} |
{% for name, value in metrics %}| {{ name }} | {{ value }} |
{% endfor %}
{{ metrics_note }}

## Use

```python
from vq3d.models.{{ module }} import {{ class_name }}
model = {{ class_name }}.from_pretrained("{{ location }}")
```

```bash
{{ commands }}
```

## How it was made

```bash
{{ training_commands }}
```

The full configuration is `config.json` ("config"); the class index is `class_index.json`.
"""


class VQ3DHubMixin(ModelHubMixin, library_name="vq3d", tags=["vq3d", "3d-aware", "nerf", "vq-gan"],
                   model_card_template=MODEL_CARD):
    """`save_pretrained` / `from_pretrained` for vq3d's models. A subclass says its `hub_kind`
    and how to build itself from (config, meta): `from_hub_config`; `hub_meta` holds the meta."""

    hub_kind: str = ""
    hub_meta: dict[str, Any]

    @classmethod
    def from_hub_config(cls, cfg: Config, meta: dict[str, Any]):
        raise NotImplementedError

    def hub_config(self) -> Config:
        """The resolved config saved beside the weights (Stage 2: set as `hub_cfg` on export)."""
        return getattr(self, "hub_cfg", None) or self.cfg

    def generate_model_card(self, *args: Any, **kwargs: Any):
        """The model card, with what the model itself knows filled in; `vq3d export-run` adds
        the data, steps, held-out metrics and commands."""
        cfg, stage1 = self.hub_config(), self.hub_kind == "stage1"
        defaults = {
            "title": f"vq3d {'Stage 1' if stage1 else 'Stage 2'} ({cfg.preset} preset)",
            "kind_text": "Stage-1 autoencoder" if stage1 else "Stage-2 transformer",
            "kind_summary": ("one forward pass turns a photo into a NeRF (ViT encoder, l2-normalized codebook, ViT "
                             "decoder to triplanes, volume rendering)." if stage1 else
                             "an autoregressive transformer over Stage-1 tokens whose samples decode to new 3D "
                             "scenes."),
            "preset": cfg.preset, "data": cfg.data.path or "not recorded", "steps": "not recorded",
            "metrics": [], "metrics_note": "", "module": "stage1" if stage1 else "gpt",
            "class_name": "Stage1Model" if stage1 else "GPT", "location": "DIR_OR_HUB_ID",
            "commands": ("vq3d reconstruct --stage1 DIR_OR_HUB_ID photo.jpg --out recon/" if stage1 else
                         "vq3d generate --stage1 STAGE1 --stage2 DIR_OR_HUB_ID --out samples/"),
            "training_commands": "not recorded",
        }
        defaults.update(kwargs)
        return super().generate_model_card(*args, **defaults)

    def _save_pretrained(self, save_directory: Path) -> None:
        meta = dict(getattr(self, "hub_meta", {}))
        save_model(self, str(save_directory / WEIGHTS))
        (save_directory / CONFIG).write_text(json.dumps(
            {"vq3d_format": FORMAT, "kind": self.hub_kind, "config": to_dict(self.hub_config()), "meta": meta},
            indent=1))
        if meta.get("class_names"):
            (save_directory / CLASS_INDEX).write_text(json.dumps(
                {name: i for i, name in enumerate(meta["class_names"])}, indent=1))

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir: str | Path | None,
                         force_download: bool, local_files_only: bool, token: str | bool | None, **_: Any):
        folder = hub_folder(model_id, revision=revision, cache_dir=cache_dir, force_download=force_download,
                            local_files_only=local_files_only, token=token)
        cfg, meta = read_hub_config(folder, cls.hub_kind)
        model = cls.from_hub_config(cfg, meta)
        model.hub_meta, model.hub_cfg = meta, cfg
        load_model(model, str(folder / WEIGHTS), strict=True)
        return model.eval()


def hub_folder(model_id: str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None,
               force_download: bool = False, local_files_only: bool = True, token: str | bool | None = None) -> Path:
    """The local folder of an exported model: `model_id` itself when it is a folder, else the
    hub id's snapshot (from the local cache only unless `local_files_only=False`)."""
    if os.path.isdir(model_id):
        return Path(model_id)
    if Path(model_id).is_absolute() or str(model_id).startswith("."):
        raise UserError(f"{model_id} does not exist: pass a vq3d run folder (its config.yaml), an exported "
                        "model (vq3d export-run) or a hub id")
    try:
        return Path(snapshot_download(str(model_id), revision=revision, cache_dir=cache_dir,
                                      force_download=force_download, local_files_only=local_files_only, token=token))
    except Exception as err:  # offline and not cached, a bad id, no network: one clear message
        where = "in the local hub cache" if local_files_only else "on the hub"
        raise UserError(f"{model_id} is not a folder and not a model {where} ({type(err).__name__}); vq3d "
                        "downloads nothing: fetch it once with `huggingface-cli download "
                        f"{model_id}` on a machine with internet, or pass a local folder") from None


def read_hub_config(folder: Path, kind: str) -> tuple[Config, dict[str, Any]]:
    """(config, meta) of an exported model folder of `kind`; UserError when it is not one."""
    path = folder / CONFIG
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(f"{folder} is not a vq3d run folder (no config.yaml) nor an exported model (no {CONFIG}): "
                        "pass the --out of a training run, or of `vq3d export-run`") from None
    if values.get("vq3d_format") != FORMAT or values.get("kind") != kind:
        raise UserError(f"{folder} holds a vq3d {values.get('kind') or 'unknown'} model (format "
                        f"{values.get('vq3d_format')}), not a {kind} model of format {FORMAT}")
    return from_dict(values["config"]), dict(values.get("meta", {}))


def is_hub_folder(path: str | Path) -> bool:
    """Whether `path` is an exported model folder (config.json beside model.safetensors)."""
    return (Path(path) / CONFIG).is_file() and (Path(path) / WEIGHTS).is_file()
