"""The CUDA host emulator itself: every property the kernel emulation tests rely on."""
import ctypes
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from .conftest import EMU_DIR, ROOT, build_emu_library, ptr

INVALID_CONFIGURATION = 9


@pytest.fixture(scope="module")
def lib():
    return build_emu_library([EMU_DIR / "emu_selftest.cu"], "emu_selftest")


@pytest.mark.parametrize("n", [1, 127, 128, 129, 1000], ids=lambda n: f"n{n}")
def test_block_sum_shuffles_shared_atomics(lib, n):
    x = torch.arange(n, dtype=torch.float32) * 0.25
    out = torch.zeros(1)
    assert lib.emu_block_sum(ptr(x), ptr(out), ctypes.c_long(n), -1) == 0
    torch.testing.assert_close(out[0], x.double().sum().float(), rtol=1e-6, atol=0)


def test_empty_grid_is_an_invalid_launch(lib):
    out = torch.full((1,), 7.0)
    assert lib.emu_block_sum(ptr(out), ptr(out), ctypes.c_long(0), -1) == INVALID_CONFIGURATION
    assert out.item() == 7.0  # nothing ran


@pytest.mark.parametrize("threads", [32, 64, 96])
def test_warp_intrinsics(lib, threads):
    inp = torch.randint(0, 1000, (threads,), dtype=torch.int32, generator=torch.Generator().manual_seed(threads))
    xo, uo, bo = (torch.empty(threads, dtype=torch.int32) for _ in range(3))
    ballot = torch.zeros(threads // 32, dtype=torch.int64)
    ballot32 = torch.zeros(threads // 32, dtype=torch.int32)
    assert lib.emu_warp_ops(ptr(inp), ptr(xo), ptr(uo), ptr(bo), ptr(ballot32), threads) == 0
    lane = torch.arange(threads)
    base = (lane // 32) * 32
    assert torch.equal(xo, inp[lane ^ 1])
    exp_up = torch.where(lane % 32 >= 1, inp[(lane - 1).clamp(min=0)], inp)
    assert torch.equal(uo, exp_up)
    assert torch.equal(bo, inp[base])
    for w in range(threads // 32):
        bits = sum(1 << i for i in range(32) if inp[w * 32 + i] % 2 == 1)
        ballot[w] = bits
    assert torch.equal(ballot32.to(torch.int64) & 0xFFFFFFFF, ballot)


@pytest.mark.parametrize("threads", [32, 64, 40])
def test_shuffles_and_ballots_with_lanes_leaving_at_different_exchanges(lib, threads):
    """One warp barrier per exchange (double-buffered slots): a lane may return right after an exchange while the
    others still read it, and later exchanges must not take its stale slot."""
    g = torch.Generator().manual_seed(threads)
    rounds = torch.randint(-1, 7, (threads,), generator=g, dtype=torch.int32)
    rounds[::5] = 6                                        # some lanes run to the end
    out = torch.full((threads,), -7, dtype=torch.int32)
    ballot = torch.zeros((threads + 31) // 32, dtype=torch.int32)
    assert lib.emu_leaving_lanes(ptr(rounds), ptr(out), ptr(ballot), threads) == 0
    v = torch.arange(threads)
    for r in range(int(rounds.max())):
        new = v.clone()
        for lane in range(threads):
            if rounds[lane] > r:
                src = lane + 1
                ok = src % 32 != 0 and src < threads and rounds[src] > r   # src made this exchange
                new[lane] = v[src if ok else lane] + 1
        v = new
    ran = rounds >= 0
    assert torch.equal(out[ran].long(), v[ran]) and bool((out[~ran] == -7).all())
    for w in range(len(ballot)):
        bits = sum(1 << i for i in range(32) if w * 32 + i < threads and ran[w * 32 + i])
        assert int(ballot[w]) & 0xFFFFFFFF == bits
    assert len(set(rounds.tolist())) >= 4


@pytest.mark.parametrize("n,threads", [(64, 64), (50, 64), (1, 32)])
def test_dynamic_shared_memory_and_early_exit(lib, n, threads):
    inp = torch.randn(threads)
    out = torch.zeros(threads)
    assert lib.emu_reverse(ptr(inp), ptr(out), n, threads) == 0
    assert torch.equal(out[:n], inp[:n].flip(0))


def test_half_and_bfloat16_conversions_match_torch(lib):
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(4000, generator=g) * 10.0 ** torch.randint(-9, 6, (4000,), generator=g),
                   torch.tensor([0.0, -0.0, 65504.0, 65520.0, 1e-8, 6e-8, float("inf"), -float("inf")])])
    h, b = torch.empty_like(x), torch.empty_like(x)
    assert lib.emu_convert(ptr(x), ptr(h), ptr(b), x.numel()) == 0
    assert torch.equal(h, x.half().float())
    assert torch.equal(b, x.bfloat16().float())


def test_a_barrier_that_not_every_thread_reaches_aborts_with_a_message(lib):
    # Thread 0 spins on a flag the other 31 threads set only after a __syncthreads that thread 0 never reaches.
    code = "import ctypes, sys; ctypes.CDLL(sys.argv[1]).emu_deadlock(ctypes.byref(ctypes.c_int(0)))"
    env = dict(os.environ, CLTK_EMU_BARRIER_TIMEOUT_S="1")
    res = subprocess.run([sys.executable, "-c", code, lib._name], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == -signal.SIGABRT, (res.returncode, res.stderr)
    assert "cuda_emu: __syncthreads timed out after 1 s with 31 of 32 threads arrived" in res.stderr


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_selftest_source_compiles_with_nvcc(tmp_path):
    res = subprocess.run(["nvcc", "-std=c++17", f"-I{ROOT / 'csrc'}", "-arch=sm_80", "-c",
                          str(EMU_DIR / "emu_selftest.cu"), "-o", str(tmp_path / "k.o")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
