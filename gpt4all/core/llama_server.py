"""`python -m gpt4all.core.llama_server ARGS`: llama_cpp.server with the settings this CPU needs."""

import runpy

from gpt4all.core.llamacpp import _configure_llama_cpp

if __name__ == "__main__":
    _configure_llama_cpp()
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
