"""MIGU's masked optimizer step on a GPT-2-small-sized transformer's parameter set (12 blocks, d = 768: 85.1M
parameters; embeddings left out), the threshold selection of all 72 linear layers inside the timed step.

Providers (one case, timed round-robin in one process, 1 thread):
  miguadamw               cltk.optim.MIGUAdamW.step(): batched top-T masks + one fused masked AdamW pass
  miguadamw_freeze        the same with freeze_masked_rows=True (masked rows skipped entirely); its own case,
                          because its byte floor differs (28 A: only active rows are read and written)
  fused_adamw             torch.optim.AdamW(fused=True), no mask at all (the floor MIGU must not be slower than)
  fused_adamw+ref_mask    per layer thr = torch.quantile(mag, T); grad.mul_(mag >= thr)[:, None]; fused AdamW
  foreach_adamw+ref_mask  the same mask, torch.optim.AdamW(foreach=True)
  forloop_adamw+ref_mask  the same mask, torch.optim.AdamW(foreach=False), torch's default on CPU

All providers share one set of parameters, gradients and moment buffers (each optimizer's state dict points at
the same exp_avg/exp_avg_sq tensors), so the case holds 4 x 85M fp32 = 1.36 GB however many providers there are;
values do not affect the timing. The magnitudes are random (fixed seed) and restored before every timed call,
because MIGUAdamW resets them after its step.

Minimum bytes of the masked step (4-byte elements, N parameters, A of them in rows that take their gradient:
the 30% top rows of every linear weight plus every bias and LayerNorm element):
  p, exp_avg, exp_avg_sq read and written (24 N) + gradient read only where active (4 A).
An unmasked AdamW step must move 28 N, so the masked step's floor is lower; GB/s of every provider are quoted
against the masked floor (the work asked for), which understates the unmasked fused step by 28N / (24N + 4A).
The bandwidth reference is the machine's measured in-place figure (a.add_(b): 2 reads + 1 write per element),
the closest access pattern to an optimizer step (4 streams read, 3 written).

Measured (Intel Xeon, 2 shared vCPUs, AVX-512, 1 thread, torch 2.13 CPU; two runs on a busy machine, in-place
bandwidth 16.3 and 18.6 GB/s): miguadamw 112.5 / 117.2 ms, 19.1 / 18.3 GB/s (117% / 99% of in-place);
fused_adamw 119.9 / 130.2 ms; fused_adamw+ref_mask 198.9 / 201.1 ms (1.77x / 1.72x); foreach+ref_mask
693 / 751 ms (6.2x / 6.4x); forloop+ref_mask 699 / 935 ms (6.2x / 8.0x); miguadamw_freeze 51.0 ms (3.9x).
"""
from __future__ import annotations

from cltk.benchmark import Case, bench_device

THRESHOLD = 0.7


def _model(blocks: int, d: int, device: str):
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
            self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    with torch.device("meta"):
        model = nn.Sequential(*[Block() for _ in range(blocks)])
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=gen)
            p.grad = torch.empty_like(p).normal_(0.0, 1e-3, generator=gen)
    return model


def _case(blocks: int, d: int, device: str, runs: int, freeze: bool = False) -> Case:
    import torch
    from torch import nn

    # Counted once here for bytes_moved (cheap: shapes only).
    n_params = blocks * (4 * (d * d + d) + 2 * (4 * d * d) + 4 * d + d + 2 * 2 * d)  # q,k,v,o; fc1,fc2; 2 LN
    rows_kept = lambda rows: rows - int(torch.tensor(float(THRESHOLD * (rows - 1))).ceil().item())  # noqa: E731
    active = blocks * (4 * (rows_kept(d) * d + d) + rows_kept(4 * d) * d + 4 * d + rows_kept(d) * 4 * d + d
                       + 2 * 2 * d)
    # Default step: p, m, v read+written everywhere, g read on active rows. Frozen step: only active rows are touched.
    bytes_moved = 28 * active if freeze else 24 * n_params + 4 * active

    def build():
        from cltk.optim import MIGUAdamW

        torch.manual_seed(0)
        model = _model(blocks, d, device)
        params = list(model.parameters())
        layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
        # Random magnitudes (distinct values, so the mask keeps exactly the quantile's rows).
        mags = [torch.rand(m.out_features, device=device) for m in layers]
        exp_avg = [torch.zeros_like(p) for p in params]
        exp_avg_sq = [torch.zeros_like(p) for p in params]
        hp = dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

        def shared_state(opt, step_device):
            for p, m, v in zip(params, exp_avg, exp_avg_sq):
                opt.state[p] = {"step": torch.tensor(1.0, device=step_device), "exp_avg": m, "exp_avg_sq": v}
            return opt

        migu = shared_state(MIGUAdamW(params, **hp, model=model, threshold=THRESHOLD), "cpu")
        migu_freeze = shared_state(MIGUAdamW(params, **hp, model=model, threshold=THRESHOLD,
                                             freeze_masked_rows=True), "cpu")
        migu_freeze.close()  # one recorder's hooks are enough; this one's magnitudes are set by hand below
        fused = shared_state(torch.optim.AdamW(params, **hp, fused=True), device)
        fused_ref = shared_state(torch.optim.AdamW(params, **hp, fused=True), device)
        foreach_ref = shared_state(torch.optim.AdamW(params, **hp, foreach=True), "cpu")
        forloop_ref = shared_state(torch.optim.AdamW(params, **hp, foreach=False), "cpu")

        def ref_mask():
            for layer, mag in zip(layers, mags):
                keep = mag >= torch.quantile(mag, THRESHOLD)
                layer.weight.grad.mul_(keep[:, None])

        def with_ref_mask(opt):
            def run():
                ref_mask()
                opt.step()
            return run

        fns = {
            "miguadamw": migu.step,
            "miguadamw_freeze": migu_freeze.step,
            "fused_adamw": fused.step,
            "fused_adamw+ref_mask": with_ref_mask(fused_ref),
            "foreach_adamw+ref_mask": with_ref_mask(foreach_ref),
            "forloop_adamw+ref_mask": with_ref_mask(forloop_ref),
        }

        def restore_magnitudes():
            for opt in (migu, migu_freeze):
                for acc, mag in zip(opt.recorder.mags, mags):
                    acc.copy_(mag)
                opt.recorder.counts.fill_(1.0)

        restore_magnitudes()
        # Check the byte count's assumptions against what this build really holds.
        assert sum(p.numel() for p in params) == n_params
        n_active = sum(p.numel() for p in params) - sum(
            int((~(mg >= torch.quantile(mg, THRESHOLD))).sum()) * l.in_features for l, mg in zip(layers, mags))
        assert n_active == active, (n_active, active)
        _RESTORE[0] = restore_magnitudes
        return {k: fns[k] for k in providers}

    if freeze:
        providers = ("miguadamw_freeze", "fused_adamw", "fused_adamw+ref_mask")
    else:
        providers = ("miguadamw", "fused_adamw", "fused_adamw+ref_mask", "foreach_adamw+ref_mask",
                     "forloop_adamw+ref_mask")
    return Case(
        kernel="masked_adamw_", mode="step",
        shape=f"{blocks}x{d} transformer, {n_params / 1e6:.1f}M fp32, T={THRESHOLD}" + (", freeze" if freeze else ""),
        bytes_moved=bytes_moved, providers=providers, baseline="fused_adamw+ref_mask", build=build,
        setup=lambda fns: _RESTORE[0](), bandwidth="inplace", device=device, memory=False, runs=runs, warmup=2,
        note=f"N={n_params} params, A={active} in active rows; unmasked AdamW floor 28N={28 * n_params} B",
    )


_RESTORE: list = [None]


def cases(quick: bool) -> list[Case]:
    device = bench_device()
    if quick:
        return [_case(blocks=2, d=256, device=device, runs=9), _case(2, 256, device, runs=9, freeze=True)]
    return [_case(blocks=12, d=768, device=device, runs=11), _case(12, 768, device, runs=11, freeze=True)]
