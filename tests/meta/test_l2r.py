"""Learning to remember (cltk.meta.l2r): the gated update, both meta-learner variants, meta-training, meta-test,
checkpoints and bad inputs, on real Fashion-MNIST at tiny settings."""
import math
import os
import subprocess
import sys

import pytest
import torch

from cltk.meta.l2r import (META_LAYERS, Episode, L2RConfig, L2RMetaLearner, Stage, clone_params, gated_step,
                           layer_shapes, load_l2r_checkpoint, meta_learner_update, meta_test, meta_train, pretrain,
                           save_l2r_checkpoint, sgd_step, student_forward, student_init)
from cltk.meta.l2r_experiments import ImagePool, run_experiment

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(1)
    fm = ImagePool("fashion-mnist")
    a = fm.task([0, 1, 2, 3, 4], per_class=200)
    b = fm.task([5, 6, 7, 8, 9], per_class=200)
    g = torch.Generator().manual_seed(0)
    ckpt = pretrain(student_init(generator=g), *a, steps=30, generator=g)
    ab = (torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]]))
    return {"a": a, "b": b, "ab": ab, "ckpt": ckpt}


def _cfg(**kw):
    base = dict(hidden=4, hidden_conv=8, hidden_norm=4, meta_steps=3, trunc_start=2, trunc_max=2)
    base.update(kw)
    return L2RConfig(**base)


@pytest.mark.parametrize("variant", ["synapse", "neuron"])
def test_initial_gate_is_scale_tanh_1_and_matches_sgd_when_one(data, variant):
    ck, (x, y) = data["ckpt"], data["b"]
    learner = L2RMetaLearner(layer_shapes(ck), _cfg(variant=variant, init_scale=1.0 / math.tanh(1.0)))
    gates = []
    new, _, _ = gated_step(learner, ck, learner.init_state(), x[:32], y[:32], 0.05, gates)
    g = torch.cat(gates)
    assert g.numel() == sum(math.prod(s) for v in layer_shapes(ck).values() for s in v)
    torch.testing.assert_close(g, torch.ones_like(g))
    ref = sgd_step(ck, x[:32], y[:32], 0.05)
    for k in ref:
        torch.testing.assert_close(new[k].detach(), ref[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["synapse", "neuron"])
def test_meta_training_reaches_every_layer(data, variant):
    learner = L2RMetaLearner(layer_shapes(data["ckpt"]), _cfg(variant=variant, meta_steps=2))
    before = {k: v.detach().clone() for k, v in learner.state_dict().items()}
    ep = Episode(data["ckpt"], [Stage(*data["b"], *data["ab"], 100)])
    hist = meta_train(learner, lambda gen: ep)
    assert len(hist["loss"]) == 2 and all(math.isfinite(v) and v > 0 for v in hist["loss"])
    after = learner.state_dict()
    for name, _, _ in META_LAYERS:
        changed = [k for k in after if k.startswith(f"lstm.{name}.") and not torch.equal(after[k], before[k])]
        assert changed, f"layer {name}: no meta-learner weight changed"


def test_meta_gradient_of_the_kernel_path_matches_the_reference(data, monkeypatch):
    """The fused kernel's backward through a truncation window equals the plain-PyTorch reference's."""
    from cltk import _ext
    if not _ext.available():
        pytest.skip("native extension not built")
    ck, (bx, by), (mx, _) = data["ckpt"], data["b"], data["ab"]

    def grads():
        learner = L2RMetaLearner(layer_shapes(ck), _cfg(seed=3))
        p, state = clone_params(ck), learner.init_state()
        for i in range(2):
            p, state, _ = gated_step(learner, p, state, bx[32 * i:32 * i + 32], by[32 * i:32 * i + 32], 0.05)
        loss = student_forward(p, mx[:64])[0].pow(2).sum()
        return torch.autograd.grad(loss, list(learner.parameters()))

    native = grads()
    monkeypatch.setattr(_ext, "use_native", lambda *a, **k: False)
    ref = grads()
    assert any(float(r.abs().max()) > 0 for r in ref)
    for n, r in zip(native, ref):
        torch.testing.assert_close(n, r, rtol=1e-4, atol=1e-7)


def test_threshold_restarts_and_curriculum(data):
    cfg = _cfg(meta_steps=4, threshold_start=1e-9, threshold_max=1e-9, trunc_start=1, trunc_max=3, trunc_every=2)
    assert [cfg.truncation(i) for i in range(6)] == [1, 1, 2, 2, 3, 3]
    learner = L2RMetaLearner(layer_shapes(data["ckpt"]), cfg)
    ep = Episode(data["ckpt"], [Stage(*data["b"], *data["ab"], 100)])
    hist = meta_train(learner, lambda gen: ep)
    assert hist["restarts"] == 4 and hist["inner_steps"] == 1 + 1 + 2 + 2
    grow = _cfg(threshold_start=1.0, threshold_growth=2.0, threshold_every=10, threshold_max=3.0)
    assert [grow.threshold(i) for i in (0, 9, 10, 20, 40)] == [1.0, 1.0, 2.0, 3.0, 3.0]


def test_meta_test_curves_and_forgetting_of_sgd(data):
    ck = data["ckpt"]
    fm_b = data["b"]
    evals = {"A": (*data["a"], *data["a"]), "B": (*fm_b, *fm_b)}
    stages = [Stage(*fm_b, *data["ab"], 20)]
    learner = L2RMetaLearner(layer_shapes(ck), _cfg())
    log = {}
    cur = meta_test(meta_learner_update(learner, 0.05, log, (0, 19)), ck, stages, evals, 10, 32, 0)
    assert cur["step"] == [0, 10, 20]
    assert all(0.0 <= v <= 1.0 for v in cur["A"] + cur["B"])
    assert sorted(log) == [0, 19] and torch.isfinite(log[19]).all()
    # same checkpoint and batches: the readout at step 0 is the same for any rule
    cur_sgd = meta_test(lambda p, x, y, t: sgd_step(p, x, y, 0.05), ck, stages, evals, 10, 32, 0)
    assert cur_sgd["A"][0] == cur["A"][0]


def test_checkpoint_round_trip_and_wrong_layer_shape(data, tmp_path):
    ck = data["ckpt"]
    learner = L2RMetaLearner(layer_shapes(ck), _cfg(variant="neuron", seed=5))
    path = save_l2r_checkpoint(tmp_path / "m.pt", learner)
    back = load_l2r_checkpoint(path, layer_shapes(ck))
    for (k, v), (k2, v2) in zip(learner.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert back.config == learner.config
    other = student_init(widths=(8, 16, 32))
    with pytest.raises(ValueError, match="other student layer shapes.*layer 'c1'"):
        load_l2r_checkpoint(path, layer_shapes(other))
    from cltk.checkpoint import save_checkpoint
    save_checkpoint({"kind": "something else"}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a cltk learning-to-remember checkpoint"):
        load_l2r_checkpoint(tmp_path / "x.pt")


@pytest.mark.parametrize("field,value,msg", [
    ("lr", 0.0, "L2RConfig.lr must be > 0"),
    ("variant", "row", r"L2RConfig.variant must be one of \('synapse', 'neuron'\), got 'row'"),
    ("lstm_layers", 0, "L2RConfig.lstm_layers must be an integer >= 1"),
    ("hidden", 2.5, "L2RConfig.hidden must be an integer"),
    ("threshold_growth", 0.5, "L2RConfig.threshold_growth must be >= 1"),
    ("huber_scale", float("nan"), "L2RConfig.huber_scale must be a finite number"),
    ("trunc_max", 1, "L2RConfig.trunc_max must be >= trunc_start"),
])
def test_bad_config_names_the_field(field, value, msg):
    with pytest.raises(ValueError, match=msg):
        L2RConfig(**{field: value})


def test_bad_experiment_inputs():
    with pytest.raises(ValueError, match="experiment must be one of"):
        run_experiment("four-tasks", quick=True)
    with pytest.raises(ValueError, match="seed must be an integer"):
        run_experiment("two-tasks", quick=True, seed=-1)
    with pytest.raises(ValueError, match="nosuchdata"):
        run_experiment("unseen-domain", quick=True, test_dataset="nosuchdata", meta_steps=0)


def test_cli_l2r_quick_writes_results(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    out = tmp_path / "res"
    r = subprocess.run([sys.executable, "-m", "cltk", "l2r", "--experiment", "three-tasks", "--quick", "--quiet",
                        "--out", str(out)], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    import json
    res = json.loads((out / "results.json").read_text())
    assert {row["method"] for row in res["table"]} == {"l2r", "sgd", "sgd x0.1", "ewc", "lwf", "teacher",
                                                        "hat", "rep", "oml"}
    assert set(res["curves"]["l2r"]) == {"step", "A", "B1", "B2"}
    for f in ("curves.csv", "curves.png", "gates.png", "meta_learner.pt"):
        assert (out / f).stat().st_size > 0
    bad = subprocess.run([sys.executable, "-m", "cltk", "l2r", "--experiment", "two-tasks", "--quick",
                          "--variant", "row", "--out", str(tmp_path / "bad")],
                         capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("cltk: error:") and "variant" in bad.stderr


def test_hat_freezes_the_units_task_a_used(data):
    from cltk.meta.l2r_experiments import hat_update
    ck, (x, y) = data["ckpt"], data["b"]
    widths = [ck["n1.g"].numel(), ck["n2.g"].numel(), ck["n3.g"].numel(), ck["n4.g"].numel()]
    used = [torch.ones(widths[0]), torch.zeros(widths[1]), torch.ones(widths[2]), torch.zeros(widths[3])]
    used[3][:5] = 1.0   # c4's rows 0..4 connect A's units to A's units: min(a_out, a_in) = 1, frozen
    update, features = hat_update(0.05, used, seed=0)
    p = update(clone_params(ck), x[:32], y[:32], 10)
    for k in ("c1.w", "n1.g", "n1.b", "c2.w"):   # c2's inputs are all A's units: min(a_out, a_in) = a_out = 0 ...
        if k == "c2.w":
            assert not torch.equal(p[k], ck[k])     # ... so c2 is free
        else:
            assert torch.equal(p[k], ck[k]), k
    assert torch.equal(p["n3.g"], ck["n3.g"]) and not torch.equal(p["c3.w"], ck["c3.w"])   # c3's inputs are free
    assert torch.equal(p["c4.w"][:5], ck["c4.w"][:5]) and not torch.equal(p["c4.w"][5:], ck["c4.w"][5:])
    assert features(p, x[:8], "A").shape == (8, widths[3])


def test_oml_checkpoint_meta_learns_the_body_and_b_trains_the_pln_only(data):
    from cltk.meta.l2r_experiments import _PLN, oml_checkpoint
    p0 = student_init(generator=torch.Generator().manual_seed(1))
    ck = oml_checkpoint(p0, *data["ab"], *data["a"], meta_steps=2, pretrain_steps=5, seed=0)
    assert not torch.equal(ck["c1.w"], p0["c1.w"])          # meta-learned RLN
    p = sgd_step(ck, data["b"][0][:32], data["b"][1][:32], 0.05, trainable=_PLN)
    for k in ck:
        if k.startswith("_"):
            continue
        assert torch.equal(p[k], ck[k]) == (k not in _PLN), k


def test_meta_lstm_gate_with_activations_takes_the_l2r_step(data):
    """cltk.optim.MetaLSTMGate with a 4-feature meta-learner, the activations and normalize=True gives the same
    step as the learning-to-remember rule, layer by layer."""
    from cltk.meta.l2r import _grads
    from cltk.optim import MetaLSTMGate
    ck, (x, y) = data["ckpt"], data["b"]
    learner = L2RMetaLearner(layer_shapes(ck), _cfg(hidden=8, seed=2))
    with torch.no_grad():
        for lst in learner.lstm.values():
            lst[4].normal_(0, 0.5)                 # a gate that varies per synapse
    new, _, _ = gated_step(learner, ck, learner.init_state(), x[:32], y[:32], 0.05)
    g, rec, _ = _grads(ck, x[:32], y[:32])
    for layer, names in (("c2", ("c2.w",)), ("n3", ("n3.g", "n3.b"))):
        params = [torch.nn.Parameter(ck[n].clone()) for n in names]
        for p, n in zip(params, names):
            p.grad = g[n].clone()
        opt = MetaLSTMGate(params, [t.detach() for t in learner.lstm[layer]], lr=0.05, normalize=True)
        opt.step(activations={p: rec[layer] for p in params})
        for p, n in zip(params, names):
            assert not torch.equal(p.detach(), ck[n])
            torch.testing.assert_close(p.detach(), new[n].detach(), rtol=1e-5, atol=1e-7)
    p = torch.nn.Parameter(ck["c2.w"].clone())
    p.grad = g["c2.w"].clone()
    opt = MetaLSTMGate([p], [t.detach() for t in learner.lstm["c2"]], lr=0.05)
    with pytest.raises(ValueError, match="activations"):
        opt.step()
    with pytest.raises(ValueError, match=r"h_in \[12\], h_out \[24\]"):
        opt.step(activations={p: (rec["c2"][1], rec["c2"][0])})
