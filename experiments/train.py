"""Train a bundled small masked-diffusion model (thin Hydra entry; the work is in focuslib.training).

    python -m experiments.train train=tiny_llada time_budget_min=45 export_dir=focuslib/checkpoints/tiny-llada
    python -m experiments.train train=tiny_sdar  time_budget_min=45 export_dir=focuslib/checkpoints/tiny-sdar
    python -m experiments.train train=tiny_sdar resume=true        # continue outputs/train/tiny_sdar/last.pt
    python -m experiments.train train=tiny_sdar_b32 task=walk '~task_options' '+task_options={min_letters: 4}'

Every field of `focuslib.training.TrainConfig` is a top-level key (model.* for the
architecture); unknown keys are errors. The presets (`train=<name>`) live in
experiments/train_conf/train/, next to this app's config (experiments/train_conf/train.yaml), apart
from the conf/ the other apps share: they do not list the presets, and conf/'s groups (task, model)
do not shadow the training fields of the same name (`task=walk` is TrainConfig.task). The run directory is Hydra's output dir,
outputs/train/<run_name> (git-ignored), so re-running with resume=true finds it.
"""
from __future__ import annotations

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config_checks import ConfigError, check_unknown_keys, clean_errors
from focuslib.training import TrainConfig, Trainer

ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def build_trainer(cfg: DictConfig) -> Trainer:
    """The run's Trainer (model, data, optimizer, resumed state); ConfigError naming what is wrong with the config."""
    problems: list[str] = []
    check_unknown_keys(cfg, TrainConfig, problems)
    if problems:
        raise ConfigError(problems)
    try:
        config: TrainConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
        return Trainer(config)
    except (OmegaConfBaseException, ValueError, TypeError, KeyError, FileNotFoundError) as err:
        raise ConfigError([str(err).strip()]) from err


@hydra.main(version_base=None, config_path="train_conf", config_name="train")
def main(cfg: DictConfig) -> None:
    with clean_errors():  # config errors (raised while the trainer is set up) print their message alone
        trainer = build_trainer(cfg)
    trainer.run()  # errors while training keep their traceback


if __name__ == "__main__":
    main()
