"""`gpt4all-bench NAME [ARGS...]`: run the benchmark module gpt4all.bench.NAME (its `main(argv)`)."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import gpt4all.bench


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(gpt4all.bench.__path__) if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in available():
        print(f"usage: gpt4all-bench NAME [ARGS...]; NAME is one of: {', '.join(available()) or '(none yet)'}")
        return 2
    return int(importlib.import_module(f"gpt4all.bench.{argv[0]}").main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
