"""The pieces of the peer benchmarks (issue 15): CPU precision pick, the raw aiohttp client, the lm-eval task."""

from __future__ import annotations

import asyncio

import pytest

from gpt4all.collect.testing_server import FakeOpenAI
from gpt4all.core.cpu import cpu_flags, describe, native_bf16
from gpt4all.train.cpu import cpu_precision

AMX = "processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"
AVX512_BF16 = "model name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
AVX2 = "model name\t: AMD EPYC 7B13\nflags\t\t: fpu sse4_2 avx2 fma\n"


@pytest.mark.parametrize("cpuinfo,expected", [(AMX, "bf16-mixed"), (AVX512_BF16, "bf16-mixed"), (AVX2, "32-true"),
                                              ("", "32-true")])
def test_cpu_precision_auto_follows_the_bf16_flags(cpuinfo, expected):
    assert cpu_precision("auto", cpu_flags(cpuinfo)) == expected
    assert cpu_precision(None, cpu_flags(cpuinfo)) == expected


def test_cpu_precision_keeps_an_explicit_choice():
    assert cpu_precision("32-true", cpu_flags(AMX)) == "32-true"
    assert cpu_precision("bf16-mixed", cpu_flags(AVX2)) == "bf16-mixed"


def test_this_machine_is_described_from_its_flags():
    d = describe()
    assert d["native_bf16"] == native_bf16() == bool(set(d["flags"]) & {"amx_bf16", "avx512_bf16"})
    assert d["cpus"] >= 1 and isinstance(d["cpu"], str)


def test_trainer_cpu_config_asks_for_auto_precision():
    from omegaconf import OmegaConf

    from gpt4all.core.config import CONF_DIR

    assert OmegaConf.load(CONF_DIR / "trainer" / "cpu.yaml").precision == "auto"


def test_raw_aiohttp_client_answers_every_request():
    from gpt4all.bench.collect import raw_aiohttp

    with FakeOpenAI(latency_s=0.01) as srv:
        seconds, answered = asyncio.run(raw_aiohttp(srv.base_url, 20, 4))
        assert answered == 20 and len(srv.answered()) == 20
    assert 0.01 * 20 / 4 <= seconds  # 4 in flight, 10 ms each: at least 5 waits


def test_raw_aiohttp_client_fails_loudly_on_server_errors():
    from aiohttp import ClientResponseError

    from gpt4all.bench.collect import raw_aiohttp
    from gpt4all.collect.testing_server import Faults

    with FakeOpenAI(latency_s=0.0, faults=Faults(rate_500=1.0)) as srv, pytest.raises(ClientResponseError):
        asyncio.run(raw_aiohttp(srv.base_url, 4, 2))
