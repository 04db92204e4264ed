"""Typed configuration: one dataclass tree for model, renderer, losses, data and training.

- `vq3d.config.schema`: the fields, their meaning and their (the paper's) defaults;
- `vq3d.config.presets`: `tiny`, `demo`, `paper`;
- `vq3d.config.io`: preset + YAML files + `--set section.key=value` overrides, checked against the
  schema (`ConfigError` names the key), and a run's resolved config saved and read back.
"""

from vq3d.config.io import (
    RETIRED_FIELDS,
    apply_dict,
    apply_overrides,
    from_dict,
    load_config,
    save_config,
    to_dict,
)
from vq3d.config.presets import PRESETS, demo, paper, tiny
from vq3d.config.schema import (
    Config,
    ConfigError,
    DataConfig,
    LossConfig,
    ModelConfig,
    RenderConfig,
    SampleConfig,
    Stage2Config,
    TrainConfig,
)

__all__ = ["Config", "ConfigError", "DataConfig", "LossConfig", "ModelConfig", "PRESETS", "RETIRED_FIELDS",
           "RenderConfig", "SampleConfig", "Stage2Config", "TrainConfig", "apply_dict", "apply_overrides", "demo",
           "from_dict", "load_config", "paper", "save_config", "tiny", "to_dict"]
