"""meta_lstm: one step of a per-row 3-layer LSTM (+ Linear(H, 1), tanh, scale head) over N rows.

Providers (1 thread, process CPU time, all in one process; fp32):
  cltk           forward: cltk.ops.meta_lstm_ (state advanced in place, no autograd);
                 full: cltk.ops.meta_lstm with persistent state_out buffers, then autograd.grad w.r.t. the 7
                 parameter tensors (gates recomputed in the backward)
  nn_lstm        torch.nn.LSTM(F, H, num_layers=3) over the row batch as one time step ([1, N, F], (h0, c0)
                 [3, N, H]), then the head; full: autograd.grad w.r.t. its parameters (the baseline)
  lstm_cells     three torch.nn.LSTMCell and the head, layer by layer
Each provider keeps its state in its own layout (cltk: unit-major [3, H, N]; torch: [3, N, H]).
The per-synapse cases (one nn.LSTM fwd+bwd call takes about 11 s) use one warm-up call instead of two; the first
call (allocation of the state and autograd buffers) is the one that differs from the rest.

Work: 2 * sum_l 4H (F_l + H) flops per row for the layers (+ 2H for the head); the forward's minimum traffic per
row is reading x and (h, c) and writing out and (h, c): (F + 4 * 3 * H + 1) * 4 bytes (bytes_moved); the full
mode reads them twice (the backward recomputes).

Compute bound: cltk.benchmark.sgemm_peak_gflops() times a single-thread 1024^3 fp32 torch.mm in the same process
(128-149 GFLOP/s on this machine, 149 when it is quiet); each case's note gives its model work and its time at that
peak.

Measured 2026-12-01 04:08 UTC, after the forward stopped copying a full tile's state to scratch (it reads h and c
in the unit-major state and writes c_new to c_out directly), same machine and settings:
  per-synapse N=1e6, H=32, F=4, forward   cltk 0.400 s (105.0 GFLOP/s, 70 % peak)  nn_lstm 2.441 s  lstm_cells 4.156 s
                                          cltk 6.10x nn_lstm (an earlier run the same hour: 0.394 s vs 2.409 s, 6.11x)
                                          peak cltk 3.7 MiB, nn_lstm 1586.8 MiB (0.23 %)
  per-synapse N=1e6, H=32, F=4, fwd+bwd   cltk 1.608 s  nn_lstm 16.18 s  lstm_cells 8.625 s (nn_lstm varies: 13.37 s
                                          in the earlier run, 11.31 s on 2026-11-30); cltk 10.1x / 8.5x nn_lstm
  per-neuron N=64, H=64, F=4, forward     cltk 115.9 us (91.6 GFLOP/s)  nn_lstm 437.2 us  cltk 3.77x
  per-neuron N=64, H=64, F=1152, forward  cltk 441.5 us (109.3 GFLOP/s)  nn_lstm 923.0 us  cltk 2.09x
  A wide (blocked, F > 128) input keeps the scratch copies: reading the state in place made that case slower
  (F=1152, 64 rows: 415 -> 605 us), for reasons not pinned down.

Measured 2026-11-30 16:48 UTC on an Intel Xeon (AVX-512; a 2-core VM shared with other jobs; 1 thread; torch 2.13.0
CPU; median of 9 process-CPU-time runs, `python -m cltk.benchmark --kernel metalstm`); ratio = nn_lstm time /
provider time, all in one process; peak = extra RSS of one call; GFLOP/s counts the layers' and head's multiply-adds
(2 flops each); % peak is against 149 GFLOP/s:
  per-synapse N=1e6, H=32, F=4, forward   cltk 0.440 s (95.5 GFLOP/s, 64 % peak)  nn_lstm 2.421 s (17.4)
                                          lstm_cells 4.133 s;  cltk 5.50x nn_lstm, 9.4x lstm_cells
                                          peak cltk 3.7 MiB, nn_lstm 1586.7 MiB (0.23 %), lstm_cells 1220.6 MiB
  per-synapse N=1e6, H=32, F=4, fwd+bwd   cltk 1.683 s  nn_lstm 11.311 s  lstm_cells 8.705 s
    (grads w.r.t. all parameters)         cltk 6.72x nn_lstm, 5.17x lstm_cells
                                          peak cltk 3.8 MiB, nn_lstm 4520.4 MiB (0.08 %), lstm_cells 2567.3 MiB
                                          cltk 59.7 GFLOP/s of model work (100.5 GFLOP: forward, weight and
                                          hidden-input gradients; the kernel's forward recompute not counted)
  per-neuron N=64, H=64, F=4, forward     cltk 127.0 us (83.6 GFLOP/s)  nn_lstm 433.1 us  lstm_cells 248.0 us
                                          cltk 3.41x nn_lstm
  per-neuron N=64, H=64, F=1152, forward  cltk 450.3 us (107.1 GFLOP/s)  nn_lstm 1011 us (47.7)  lstm_cells 642.3 us
                                          cltk 2.24x nn_lstm
An earlier run of the same bench (16:35 UTC, before the state prefetch change below): forward 0.463 s (5.30x),
fwd+bwd 1.721 s (6.84x), per-neuron 126.9 us (3.64x) and 441.2 us (2.02x).
Before this kernel revision (same bench and machine, earlier the same day): forward 0.597 s (70.4 GFLOP/s, 4.22x),
fwd+bwd 2.107 s (5.51x), per-neuron 158.2 us (3.51x) and 640.7 us (2.06x).

What changed (csrc/metalstm/metalstm_cpu.cpp): sigmoid and tanh in 13 AVX-512 instructions each instead of about
26 (exp2 as a degree-5 polynomial on vreduceps' fraction, scaled by vscalefps, which needs no clamping; a 14-bit
reciprocal with one Newton step; masked instructions for the overflow cases); inputs wider than 128 features are
multiplied in feature blocks over all units so that the transposed input block stays in L1; the row-to-SoA
transposes use at::vec's 16 x 16 block transpose (the scalar loop cost a third of the F = 1152 forward); the next
tile's state is prefetched unit by unit during the layer loop (a burst at the start of each tile stalled it); tile
scratch is a reused per-thread arena (no per-call allocation and zeroing).

Goals: forward >= 6x nn.LSTM (met since 2026-12-01: 6.10x-6.11x; before, 5.3x-5.5x), fwd+bwd >= 6x (yes,
6.7x-10.1x); forward peak <= 5 % of nn.LSTM's (yes, 0.23 %), fwd+bwd <= 1/5 (yes, 0.08 %); per-neuron forward >= 5x
(no: 3.4x-3.8x at F=4, 2.0x-2.2x at F=1152).
Where the per-synapse forward stands: a 64-row tile is 83968 gate FMAs and, for the 5 activations per unit and row
plus the cell update, about 26000 more vector instructions on the same two FMA ports; a standalone loop of the
sigmoid takes about 8 cycles per 16 values (vrcp14ps alone about 2), so the activations cost about 120 cycles per
unit-vector against 328 for the FMAs and the kernel can reach about 73 % of the FMA peak. 6x nn.LSTM (2.421 s)
needs 0.403 s = 104 GFLOP/s, 70 % of the peak; it runs at 70 % since the state copies went (64 % before; the copies
in and out of tile scratch were about 9 % of the kernel's samples in a perf profile, the rest of the gap the gate
loops' loads).
Per-neuron, F=4: 10.6 MFLOP per call, 71 us at the 149 GFLOP/s peak; 5x nn.LSTM (433 us) needs 87 us = 123
GFLOP/s (82 % of the peak) with one 64-row tile per call, whose 324 KiB of weights are read from L2 once per call.
Per-neuron, F=1152: 48.2 MFLOP per call, 324 us at the 149 GFLOP/s sgemm peak, so the ratio against nn.LSTM's
1011 us can be at most 3.1x; 5x would need 202 us = 239 GFLOP/s, 1.6 times the measured single-thread sgemm peak
(with the 1323 us nn.LSTM took in the earlier measurement, 5x would still need 182 GFLOP/s): not reachable on one
core. The kernel runs this case at 107 GFLOP/s (72 % of the peak); nn.LSTM at 48.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from cltk.benchmark import Case, bench_device, sgemm_peak_gflops

LAYERS = 3


def flops_per_row(F: int, H: int, L: int = LAYERS) -> int:
    return 2 * sum(4 * H * ((F if layer == 0 else H) + H) for layer in range(L)) + 2 * H


def model_flops(N: int, F: int, H: int, mode: str, L: int = LAYERS) -> int:
    """Forward: the layers and head; full: forward + weight gradients (as many flops) + the gradients of the hidden
    inputs of layers 1..L-1 (the kernel's forward recompute is not counted)."""
    fwd = flops_per_row(F, H, L)
    if mode == "forward":
        return N * fwd
    return N * (2 * fwd + 2 * (L - 1) * 4 * H * H)


@functools.lru_cache(maxsize=None)
def sgemm_peak() -> float:
    """The in-process single-thread sgemm peak (median of 7), measured once per process."""
    return sgemm_peak_gflops()


def _case(N: int, F: int, H: int, mode: str, device: str, label: str) -> Case:
    providers = ("cltk", "nn_lstm", "lstm_cells")

    def build():
        import cltk.ops as ops

        torch.manual_seed(0)
        lstm = nn.LSTM(F, H, num_layers=LAYERS).to(device)
        cells = [nn.LSTMCell(F if k == 0 else H, H).to(device) for k in range(LAYERS)]
        head = nn.Linear(H, 1).to(device)
        scale = nn.Parameter(torch.tensor(1.0, device=device))
        w = [t.detach().clone().requires_grad_() for t in ops.meta_lstm_weights(lstm, head, scale)]
        x = torch.randn(N, F, device=device)
        h0 = torch.randn(LAYERS, N, H, device=device) * 0.1
        c0 = torch.randn(LAYERS, N, H, device=device) * 0.1
        hu, cu = h0.transpose(1, 2).contiguous(), c0.transpose(1, 2).contiguous()
        hu_out, cu_out = torch.empty_like(hu), torch.empty_like(cu)
        g = torch.randn(N, device=device)
        lstm_params = list(lstm.parameters()) + list(head.parameters()) + [scale]
        cell_params = [p for cell in cells for p in cell.parameters()] + list(head.parameters()) + [scale]

        def lstm_fwd():
            y, _ = lstm(x[None], (h0, c0))
            return scale * torch.tanh(head(y[0])).squeeze(1)

        def cells_fwd():
            inp = x
            for k, cell in enumerate(cells):
                inp, _ = cell(inp, (h0[k], c0[k]))
            return scale * torch.tanh(head(inp)).squeeze(1)

        if mode == "forward":
            def cltk_fn():
                return ops.meta_lstm_(x, hu, cu, *[t.detach() for t in w])

            def nolst():
                with torch.no_grad():
                    return lstm_fwd()

            def nocells():
                with torch.no_grad():
                    return cells_fwd()

            return {"cltk": cltk_fn, "nn_lstm": nolst, "lstm_cells": nocells}

        def cltk_full():
            out, _, _ = ops.meta_lstm(x, hu, cu, *w, state_out=(hu_out, cu_out))
            return torch.autograd.grad(out, w, g)

        return {
            "cltk": cltk_full,
            "nn_lstm": lambda: torch.autograd.grad(lstm_fwd(), lstm_params, g),
            "lstm_cells": lambda: torch.autograd.grad(cells_fwd(), cell_params, g),
        }

    per_row_bytes = (F + 4 * LAYERS * H + 1) * 4  # read x, h, c; write out, h, c (module docstring)
    if mode == "full":
        per_row_bytes += (F + 2 * LAYERS * H + 1) * 4  # the backward reads x, h, c and grad_out again
    return Case(kernel="meta_lstm", mode=mode, shape=f"{label} N={N} H={H} F={F} L={LAYERS} fp32",
                bytes_moved=per_row_bytes * N, providers=providers, baseline="nn_lstm", build=build,
                bandwidth="copy", device=device, warmup=1 if N >= 100_000 else 2,
                note=_note(model_flops(N, F, H, mode), device))


def _note(flops: int, device: str) -> str:
    """The case's model work and, on the CPU, the time it takes at the measured sgemm peak (the compute bound)."""
    if device != "cpu":
        return f"{flops / 1e9:.3f} GFLOP"
    peak = sgemm_peak()
    return f"{flops / 1e9:.3f} GFLOP; {flops / (peak * 1e9) * 1e6:.1f} us at the {peak:.0f} GFLOP/s sgemm peak"


def cases(quick: bool) -> list[Case]:
    device = bench_device()
    n = 100_000 if quick else 1_000_000
    return [
        _case(n, 4, 32, "forward", device, "per-synapse"),
        _case(n, 4, 32, "full", device, "per-synapse"),
        _case(64, 4, 64, "forward", device, "per-neuron"),
        _case(64, 1152, 64, "forward", device, "per-neuron"),
    ]
