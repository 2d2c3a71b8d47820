"""`gpt4all-train`: Hydra entry point of the train stage."""

from gpt4all.core.app import stage_app
from gpt4all.train.stage import run

main = stage_app("train", run)

if __name__ == "__main__":
    main()
