"""`gpt4all-evaluate`: Hydra entry point of the evaluate stage."""

from gpt4all.core.app import stage_app
from gpt4all.evaluate.stage import run

main = stage_app("evaluate", run)

if __name__ == "__main__":
    main()
