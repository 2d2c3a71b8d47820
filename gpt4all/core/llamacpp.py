"""llama.cpp's own sources at the installed llama-cpp-python revision: converters, gguf-py and tools.

llama-cpp-python installs only the compiled library; its source distribution vendors llama.cpp (the converters
`convert_hf_to_gguf.py` / `convert_lora_to_gguf.py`, the matching `gguf-py`, and the C++ tools). This module
fetches that sdist once (from the package index pip is configured with, or a file named by
`GPT4ALL_LAB_LLAMACPP_SDIST`), unpacks `vendor/llama.cpp` into the model cache and runs scripts from it, so
every converter call uses the same llama.cpp revision as the runtime that loads its output.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from filelock import FileLock

from gpt4all.core.cpu import cpu_flags

log = logging.getLogger(__name__)

DIST = "llama-cpp-python"
SDIST_ENV = "GPT4ALL_LAB_LLAMACPP_SDIST"   # a local llama_cpp_python-<version>.tar.gz (offline machines)
SOURCE_ENV = "GPT4ALL_LAB_LLAMACPP_SRC"    # an unpacked llama.cpp checkout to use as it is


class LlamaCppSourceError(RuntimeError):
    """llama.cpp's sources could not be found or fetched; the message says how to provide them."""


def installed_version() -> str:
    """The installed llama-cpp-python version (the revision the converters must match)."""
    try:
        return importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError as err:
        raise LlamaCppSourceError(f"{DIST} is not installed: pip install {DIST}") from err


def default_cache_root() -> Path:
    return Path(os.environ.get("GPT4ALL_LAB_CACHE", Path.home() / ".cache" / "gpt4all-lab")).expanduser()


def _download_sdist(version: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
           f"{DIST}=={version}", "-d", str(dest)]
    log.info("fetching the %s %s source distribution for llama.cpp's converters (once)", DIST, version)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob("llama_cpp_python-*.tar.gz"))
    if proc.returncode != 0 or not found:
        raise LlamaCppSourceError(
            f"could not fetch the {DIST}=={version} source distribution (needed for llama.cpp's converters): "
            f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no file downloaded'}\n"
            f"  offline: download it elsewhere (pip download --no-deps --no-binary :all: {DIST}=={version}) "
            f"and set {SDIST_ENV}=/path/to/llama_cpp_python-{version}.tar.gz")
    return found[0]


def source_dir(cache_root: str | Path | None = None) -> Path:
    """The unpacked `vendor/llama.cpp` of the installed llama-cpp-python version, fetched once and cached."""
    if os.environ.get(SOURCE_ENV):
        src = Path(os.environ[SOURCE_ENV]).expanduser()
        if not (src / "convert_hf_to_gguf.py").is_file():
            raise LlamaCppSourceError(f"{SOURCE_ENV}={src} has no convert_hf_to_gguf.py")
        return src
    version = installed_version()
    root = Path(cache_root).expanduser() if cache_root else default_cache_root()
    out = root / f"llama.cpp-{version}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / ".complete").exists():
            return out
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            sdist = Path(os.environ[SDIST_ENV]).expanduser() if os.environ.get(SDIST_ENV) else None
            if sdist is not None and not sdist.is_file():
                raise LlamaCppSourceError(f"{SDIST_ENV}={sdist} is not a file")
            sdist = sdist or _download_sdist(version, Path(tmp))
            prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
            with tarfile.open(sdist) as tar:
                members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
                if not members:
                    raise LlamaCppSourceError(f"{sdist} has no {prefix} (not the {DIST} {version} sdist?)")
                for m in members:
                    m.name = m.name[len(prefix):]
                tar.extractall(Path(tmp) / "src", members=[m for m in members if m.name], filter="data")
            if out.exists():
                shutil.rmtree(out)
            (Path(tmp) / "src").rename(out)
        (out / ".complete").write_text(version)
    return out


def run_script(script: str, args: list[str], cache_root: str | Path | None = None,
               timeout_s: float | None = None) -> subprocess.CompletedProcess:
    """Run one of llama.cpp's Python scripts (e.g. convert_hf_to_gguf.py) with its own gguf-py first on the path."""
    src = source_dir(cache_root)
    path = src / script
    if not path.is_file():
        raise LlamaCppSourceError(f"{script} not found in {src}")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(src / "gguf-py"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("NO_LOCAL_GGUF", None)   # the script then also puts its own gguf-py first
    return subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, env=env,
                          timeout=timeout_s)


TOOL_TARGETS = ("llama-imatrix", "llama-quantize")  # built together, once per llama.cpp revision
_CMAKE_FLAGS = ("-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TOOLS=ON",
                "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
                "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_UI=OFF", "-DGGML_OPENMP=OFF")


def tool(name: str, cache_root: str | Path | None = None, jobs: int | None = None) -> Path:
    """A llama.cpp command-line tool (`llama-imatrix`, `llama-quantize`) built from `source_dir()` for the CPU.

    The first call configures cmake and builds only TOOL_TARGETS (static, Release) into `<sources>-build/`
    beside the sources, under a file lock, so concurrent callers build once; later calls return the binary.
    """
    if name not in TOOL_TARGETS:
        raise ValueError(f"llama.cpp tool {name!r} is not built here; available: {', '.join(TOOL_TARGETS)}")
    src = source_dir(cache_root)
    build = src.parent / f"{src.name}-build"
    binary = build / "bin" / name
    with FileLock(str(build) + ".lock"):
        if (build / ".complete").exists() and binary.is_file():
            return binary
        if shutil.which("cmake") is None:
            raise LlamaCppSourceError(f"building {name} needs cmake and a C++ compiler (apt-get install cmake g++)")
        jobs = jobs or max(1, os.cpu_count() or 1)
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        log.info("building %s from %s into %s (once, a few minutes)", ", ".join(TOOL_TARGETS), src, build)
        for cmd in ([ "cmake", "-S", str(src), "-B", str(build), *generator, *_CMAKE_FLAGS],
                    ["cmake", "--build", str(build), "--target", *TOOL_TARGETS, "-j", str(jobs)]):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
                raise LlamaCppSourceError(f"building llama.cpp tools failed: {' '.join(cmd)}\n{tail}")
        (build / ".complete").write_text(installed_version())
    if not binary.is_file():
        raise LlamaCppSourceError(f"{binary} missing after the build")
    return binary

# --- running llama.cpp on this CPU -----------------------------------------------------------------------------
EXTRA_BUFFERS_ENV = "GPT4ALL_LAB_LLAMACPP_EXTRA_BUFFERS"   # 1 / 0 forces llama.cpp's repacked weight buffers on / off


def use_extra_buffers() -> bool:
    """Whether llama.cpp may repack weights into its extra CPU buffer types (AMX, CPU_REPACK).

    llama-cpp-python 0.3.36 segfaults in the first decode on CPUs with AMX when those buffers are used (seen on
    an Intel Xeon with amx_int8: SmolLM2 Q4_1, f16 and q4_0 exports alike), so they are off there by default.
    """
    forced = os.environ.get(EXTRA_BUFFERS_ENV)
    if forced is not None:
        return forced.strip().lower() not in ("0", "false", "no", "off")
    return "amx_int8" not in cpu_flags()


def _configure_llama_cpp() -> None:
    """Make every `llama_cpp.Llama` built in this process follow use_extra_buffers() (idempotent)."""
    import llama_cpp.llama as llama_module

    if getattr(llama_module, "_gpt4all_configured", False) or use_extra_buffers():
        return
    default_params = llama_module.llama_cpp.llama_model_default_params

    def model_params():
        params = default_params()
        params.use_extra_bufts = False
        return params

    llama_module.llama_cpp.llama_model_default_params = model_params
    llama_module._gpt4all_configured = True
    log.info("llama.cpp: extra CPU buffer types off on this CPU (amx_int8; set %s=1 to force them on)",
             EXTRA_BUFFERS_ENV)


def Llama(*args, **kwargs):  # noqa: N802 - a drop-in for llama_cpp.Llama
    """`llama_cpp.Llama(...)` with the settings this CPU needs (see use_extra_buffers)."""
    _configure_llama_cpp()
    from llama_cpp import Llama as _Llama

    return _Llama(*args, **kwargs)
