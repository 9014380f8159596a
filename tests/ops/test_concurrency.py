"""Every op called from several Python threads at once gives the single-threaded results, bit for bit.

4 threads x 50 calls per op, started together behind a barrier, on (a) distinct inputs per call and (b) inputs shared
read-only by all threads (each call owns only what the op writes: the accumulator, the optimizer state, the LSTM
state, the out buffers). The reference results are computed first, in this thread, with the same intra-op thread
count (the native CPU kernels are deterministic for a given thread count). The shared inputs must come out unchanged.
Run with 1 intra-op thread and, with 12 calls per thread, with 2, so that the ops' own ``at::parallel_for`` also
runs from several callers at once.
"""
import threading

import pytest
import torch

import cltk
from cltk.ops.bicubic import bicubic_modulate, bicubic_modulate_multi
from cltk.ops.masked_adamw import masked_adamw_
from cltk.ops.metalstm import meta_lstm, meta_lstm_, meta_lstm_init
from cltk.ops.migu import row_l1_accumulate_, topk_row_mask, topk_row_mask_batched

pytestmark = pytest.mark.skipif(not cltk._ext.available(), reason=f"cltk._C not loaded: {cltk._ext.reason()}")

THREADS, CALLS = 4, 50
CALLS_INTRAOP2 = 12   # with 2 intra-op threads per call (8 busy threads on a small machine): a shorter run


def _g(seed):
    return torch.Generator().manual_seed(seed)


# Each op: make(seed) -> (shared read-only inputs), call(inputs) -> tuple of result tensors (fresh per call).
def _row_l1_make(seed):
    return (torch.randn(3, 37, 65, generator=_g(seed)).transpose(0, 1),)       # non-contiguous (T, B, d) view


def _row_l1_call(y):
    acc = torch.zeros(y.shape[-1])
    row_l1_accumulate_(acc, y)
    return (acc,)


def _topk_make(seed):
    return (torch.randn(301, generator=_g(seed)), torch.randint(0, 5, (64,), generator=_g(seed + 1)).double())


def _topk_call(a, b):
    return topk_row_mask(a, 0.7), topk_row_mask(b, 0.3), *topk_row_mask_batched([a, b, a[:17]], 0.55)


def _adamw_make(seed):
    g = _g(seed)
    shapes = [(40, 9), (40,), (7, 3, 3)]
    params = [torch.randn(s, generator=g) for s in shapes]
    grads = [torch.randn(s, generator=g) for s in shapes]
    grads[0] = torch.randn(9, 40, generator=g).t()                           # a non-contiguous gradient
    ms = [torch.randn(s, generator=g) * 0.1 for s in shapes]
    vs = [torch.rand(s, generator=g) * 0.01 for s in shapes]
    masks = [torch.rand(s[0], generator=g) < 0.5 for s in shapes[:2]] + [None]
    return params, grads, ms, vs, masks


def _adamw_call(params, grads, ms, vs, masks):
    p, m, v = ([t.clone() for t in ts] for ts in (params, ms, vs))
    steps = [torch.tensor(3.0) for _ in p]
    masked_adamw_(p, grads, m, v, masks, steps, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2)
    return (*p, *m, *v)


def _bicubic_make(seed):
    g = _g(seed)
    return (torch.randn(48, 30, generator=g), torch.randn(4, 4, generator=g).requires_grad_(),
            torch.randn(16, 3, 3, 3, generator=g).requires_grad_(), torch.randn(3, 5, generator=g).requires_grad_(),
            torch.randn(48, 30, generator=g))


def _bicubic_call(w, mod, conv_w, conv_mod, gout):
    out = bicubic_modulate(w, mod)
    (gm,) = torch.autograd.grad(out, [mod], gout)
    out2 = bicubic_modulate(conv_w, conv_mod, True)
    gw2, gm2 = torch.autograd.grad(out2.square().sum(), [conv_w, conv_mod])
    with torch.no_grad():
        bufs = [torch.empty_like(w), torch.empty_like(conv_w)]
        multi = bicubic_modulate_multi([w, conv_w], [mod, conv_mod], out=bufs)
    multi_g = bicubic_modulate_multi([w, conv_w], [mod, conv_mod])
    gms = torch.autograd.grad(multi_g[0].sum() + multi_g[1].square().sum(), [mod, conv_mod])
    return out.detach(), gm, out2.detach(), gw2, gm2, *multi, *(t.detach() for t in multi_g), *gms


def _lstm_make(seed):
    g = _g(seed)
    N, F, H, L = 70, 5, 8, 2
    params = meta_lstm_init(F, H, L, generator=g)
    with torch.no_grad():
        params[4].copy_(torch.randn(H, generator=g))
    x = torch.randn(N, F, generator=g)
    h = torch.randn(L, H, N, generator=g) * 0.5
    c = torch.randn(L, H, N, generator=g)
    mult = torch.randn(N, generator=g)
    return x, h, c, mult, *params


def _lstm_call(x, h, c, mult, *params):
    out, h1, c1 = meta_lstm(x, h, c, *params, multiply=mult)
    grads = torch.autograd.grad(out.square().sum() + h1.sum(), params)
    hh, cc = h.clone(), c.clone()
    out_ = meta_lstm_(x, hh, cc, *params)
    bufs = (torch.empty_like(h), torch.empty_like(c))
    with torch.no_grad():
        out_b, _, _ = meta_lstm(x, h, c, *params, state_out=bufs)
    return out.detach(), h1.detach(), c1.detach(), *grads, out_, hh, cc, out_b, *bufs


OPS = {
    "row_l1_accumulate_": (_row_l1_make, _row_l1_call),
    "topk_row_mask": (_topk_make, _topk_call),
    "masked_adamw_": (_adamw_make, _adamw_call),
    "bicubic_modulate": (_bicubic_make, _bicubic_call),
    "meta_lstm": (_lstm_make, _lstm_call),
}


def _flat(inputs):
    out = []
    for t in inputs:
        if isinstance(t, (list, tuple)):
            out += _flat(t)
        elif isinstance(t, torch.Tensor):
            out.append(t)
    return out


def _run_threads(work):
    """work(i) for i in range(THREADS), started together; re-raises the first error of any thread."""
    barrier = threading.Barrier(THREADS)
    errors = []

    def target(i):
        try:
            barrier.wait()
            work(i)
        except BaseException as e:   # noqa: BLE001 - reported in the main thread
            errors.append(e)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread did not finish within 120 s"
    if errors:
        raise errors[0]


def _assert_equal(got, want, what):
    assert len(got) == len(want), what
    for k, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape and a.dtype == b.dtype, f"{what}: result {k} {a.shape} {a.dtype} vs {b.shape}"
        assert torch.equal(a, b), f"{what}: result {k} differs from the single-threaded result"


@pytest.fixture(params=[1, 2], ids=["intraop1", "intraop2"])
def calls(request):
    """Sets the intra-op thread count; gives the number of calls per Python thread."""
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield CALLS if request.param == 1 else CALLS_INTRAOP2
    torch.set_num_threads(old)


@pytest.mark.parametrize("name", list(OPS))
def test_distinct_inputs_per_call(name, calls):
    make, call = OPS[name]
    inputs = {(i, j): make(1000 * i + j) for i in range(THREADS) for j in range(calls)}
    want = {k: call(*v) for k, v in inputs.items()}
    got = {}

    def work(i):
        for j in range(calls):
            got[(i, j)] = call(*inputs[(i, j)])

    _run_threads(work)
    for k in inputs:
        _assert_equal(got[k], want[k], f"{name} thread {k[0]} call {k[1]}")


@pytest.mark.parametrize("name", list(OPS))
def test_shared_read_only_inputs(name, calls):
    make, call = OPS[name]
    shared = make(7)
    before = [t.detach().clone() for t in _flat(shared)]
    want = call(*shared)
    got = {}

    def work(i):
        for j in range(calls):
            got[(i, j)] = call(*shared)

    _run_threads(work)
    for k, res in got.items():
        _assert_equal(res, want, f"{name} thread {k[0]} call {k[1]}")
    for a, b in zip(_flat(shared), before):
        assert torch.equal(a.detach(), b), f"{name}: a shared input was modified"
