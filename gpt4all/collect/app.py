"""`gpt4all-collect`: Hydra entry point of the collect stage."""

from gpt4all.collect.stage import run
from gpt4all.core.app import stage_app

main = stage_app("collect", run)

if __name__ == "__main__":
    main()
