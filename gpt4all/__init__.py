"""gpt4all-lab: a config-driven reproduction of the GPT4All technical report."""

__version__ = "0.1.0"
