"""`gpt4all-curate`: Hydra entry point of the curate stage."""

from gpt4all.core.app import stage_app
from gpt4all.curate.stage import run

main = stage_app("curate", run)

if __name__ == "__main__":
    main()
