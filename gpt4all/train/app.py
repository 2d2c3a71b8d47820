"""`gpt4all-train`: Hydra entry point of the train stage.

With `train.objective` set (hparams_search=optuna sets val_loss), the job returns that metric to the sweeper.
"""

from typing import Any

from omegaconf import DictConfig

from gpt4all.core.app import hydra_app
from gpt4all.core.tracking import run_stage
from gpt4all.train.stage import run


def objective(cfg: DictConfig, result: dict[str, Any]) -> Any:
    """The metric named by train.objective (a float for Optuna), else the stage's whole result."""
    name = cfg.train.get("objective")
    if not name:
        return result
    if result.get(name) is None:
        raise ValueError(f"train.objective={name}: the run produced no such metric (have {', '.join(result)})")
    return float(result[name])


main = hydra_app("train", lambda cfg, run_dir, group: objective(cfg, run_stage("train", cfg, run_dir, run, group=group)))

if __name__ == "__main__":
    main()
