"""`gpt4all-quantize`: Hydra entry point of the quantize stage."""

from gpt4all.core.app import stage_app
from gpt4all.quantize.stage import run

main = stage_app("quantize", run)

if __name__ == "__main__":
    main()
