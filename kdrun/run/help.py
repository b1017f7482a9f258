"""`kdrun <command> --help`: the command's header, its config groups and its composed config, without Hydra's
help machinery (which builds a config repository per group: over a second) and without torch."""

from __future__ import annotations

from hydra import initialize_config_dir
from omegaconf import OmegaConf

from kdrun.run.config import config_dir
from kdrun.run.preflight import compose_config, group_options


def command_help(config_name: str, overrides: list[str]) -> str:
    """The text Hydra's default help template gives: header, groups, config (with `overrides`), footer."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="help"):
        cfg = compose_config(config_name, overrides)
    text = OmegaConf.select(cfg, "hydra.help", default=None) or {}
    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    groups = [f"{group}: {', '.join(options)}" for group, options in group_options(config_dir()).items()
              if OmegaConf.select(cfg, f"hydra.runtime.choices.{group}", default="absent") != "absent"]
    return "\n".join([str(text.get("header", "")).rstrip(), "", "== Configuration groups ==",
                      "Compose your configuration from those groups (group=option)", "", *groups, "", "",
                      "== Config ==", "Override anything in the config (foo.bar=value)", "",
                      OmegaConf.to_yaml(task, resolve=False).rstrip(), "", str(text.get("footer", "")).rstrip()])
