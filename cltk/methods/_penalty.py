"""Shared machinery of the parameter-regularisation methods (EWC, online EWC, SI, MAS).

Every one of them adds a weighted quadratic pull towards anchor parameters,

    penalty(theta) = sum_k c_k * sum_i w_{k,i} (theta_i - a_{k,i})^2,

with one term ``k`` per stored task (EWC) or a single running term (online EWC, SI, MAS). Importances ``w`` and
anchors ``a`` are lists of tensors, one per trainable parameter, in ``model.parameters()`` order.
:func:`quadratic_penalty` evaluates the value and its gradient over all parameters at once with ``torch._foreach_*``
kernels (one launch per term and operation, not one per parameter); :func:`quadratic_penalty_ref` is the same sum as
a plain per-parameter loop, the test oracle. With several terms (EWC from the third task on),
:meth:`QuadraticRegularizer.penalty` evaluates one merged term and a constant (:func:`merge_quadratic_terms`, formed
once per new term), so a step costs the same whatever the number of tasks (1.9 ms against 1.7 / 3.5 / 7.1 ms for
1 / 2 / 4 separate terms on the 478k-parameter 2x400 MLP, 1 thread).

Importances built from per-sample gradients (the diagonal Fisher of EWC, the output-norm sensitivity of MAS) come
from :func:`per_sample_grad_moment`, which uses ``torch.func.vmap`` over chunks of samples and falls back to a loop of
single-sample backward passes for models ``vmap`` cannot trace. For a plain stack of ``nn.Linear`` layers and
elementwise activations (the MLPs of the split-MNIST protocols) it needs no per-sample gradient at all: sample n's
gradient of a layer's weight is the outer product ``delta_n x_n^T`` of the gradient at the layer's output and its
input, so the sum of its squares (absolute values) over n is one matrix product, ``(delta^2)^T (x^2)``
(``|delta|^T |x|``).
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["QuadraticTerm", "quadratic_penalty", "quadratic_penalty_ref", "merge_quadratic_terms",
           "trainable_parameters", "per_sample_grad_moment", "auto_chunk_size", "rank_shard", "unwrap_ddp",
           "all_reduce_mean_", "detached_copy", "check_like"]

# (coefficient c_k, importances w_k, anchors a_k)
QuadraticTerm = tuple[float, list[Tensor], list[Tensor]]


def trainable_parameters(model: nn.Module) -> list[Tensor]:
    """The parameters a penalty acts on: those with ``requires_grad``, in ``model.parameters()`` order."""
    return [p for p in model.parameters() if p.requires_grad]


def unwrap_ddp(model: nn.Module) -> nn.Module:
    """The wrapped module of a ``DistributedDataParallel`` (its forward would join collectives per sample)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def detached_copy(tensors: Sequence[Tensor]) -> list[Tensor]:
    return [t.detach().clone() for t in tensors]


def check_like(what: str, tensors: Sequence[Tensor], params: Sequence[Tensor]) -> None:
    """Raise ``ValueError`` unless ``tensors`` has one tensor per parameter with the parameter's shape."""
    if len(tensors) != len(params):
        raise ValueError(f"{what}: expected {len(params)} tensors (one per trainable parameter), got {len(tensors)}")
    for i, (t, p) in enumerate(zip(tensors, params)):
        if t.shape != p.shape:
            raise ValueError(f"{what}[{i}]: expected shape {tuple(p.shape)}, got {tuple(t.shape)}")


class _QuadraticPenalty(torch.autograd.Function):
    """sum_k c_k sum_i w_ki (theta_i - a_ki)^2 over lists; backward 2 sum_k c_k w_k (theta - a_k)."""

    @staticmethod
    def forward(ctx, terms: Sequence[QuadraticTerm], *params: Tensor) -> Tensor:
        params = [p.detach() for p in params]
        total = params[0].new_zeros(())
        grad_half: Optional[list[Tensor]] = None          # sum_k c_k w_k (theta - a_k)
        for term in terms:
            coef, weights, anchors = term[:3]
            diff = torch._foreach_sub(params, anchors)
            if len(term) > 3:                               # a merged term's low-order anchor part
                torch._foreach_sub_(diff, term[3])
            wdiff = torch._foreach_mul(diff, weights)
            torch._foreach_mul_(wdiff, coef)
            # c w d^2 is >= 0 elementwise (importances are non-negative), so the L1 norm of each tensor is its sum:
            # one reduction per parameter tensor inside a single foreach call.
            torch._foreach_mul_(diff, wdiff)
            total = total + torch.stack(torch._foreach_norm(diff, 1)).sum()
            if grad_half is None:
                grad_half = wdiff
            else:
                torch._foreach_add_(grad_half, wdiff)
        ctx.save_for_backward(*grad_half)
        return total

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grads = torch._foreach_mul(list(ctx.saved_tensors), 2.0 * grad_out)
        return (None, *grads)


def quadratic_penalty(params: Sequence[Tensor], terms: Sequence[QuadraticTerm]) -> Optional[Tensor]:
    """``sum_k c_k sum_i w_ki (theta_i - a_ki)^2`` as a 0-d tensor differentiable w.r.t. ``params``.

    ``params``: the trainable parameters (any shapes); each term holds a float ``c_k >= 0`` and two lists with one
    tensor per parameter (same shape, dtype and device), importances ``w_k >= 0`` and anchors ``a_k``. Returns
    ``None`` when there is no term (nothing consolidated yet). Nothing is modified in place.
    """
    if any(t[0] < 0 for t in terms):
        raise ValueError(f"quadratic_penalty: coefficients must be >= 0, got {[t[0] for t in terms]}")
    terms = [t for t in terms if t[0] != 0.0]
    if not terms or not params:
        return None
    return _QuadraticPenalty.apply(terms, *params)


def merge_quadratic_terms(terms: Sequence[QuadraticTerm]) -> tuple[tuple, Tensor]:
    """One term and a constant equal to a sum of terms: ``sum_k c_k w_k (theta - a_k)^2 = W (theta - m)^2 + C``
    elementwise, with ``W = sum_k c_k w_k``, ``m = sum_k c_k w_k a_k / W`` (the last anchor where ``W == 0``) and
    ``C = sum_k c_k w_k (a_k - m)^2``, all computed in float64. Returns the term ``(1.0, W, m_hi, m_lo)`` in the
    parameters' dtype, ``m`` split into a rounded part and the rounding error (``theta - m_hi - m_lo`` keeps
    ``theta - m`` accurate where theta is close to m; with ``m`` rounded once, the gradient of such elements was
    off by up to 3e-4 relative in float32), and ``C`` summed over all elements as a 0-d tensor. The merged
    gradient ``2 W (theta - m)`` is the sum of the terms' gradients up to rounding."""
    if not terms:
        raise ValueError("merge_quadratic_terms: expected at least one term")
    n = len(terms[0][1])
    weights, anchors, lows, const = [], [], [], 0.0
    for i in range(n):
        ws = [float(c) * w[i].double() for c, w, _ in terms]
        big_w = sum(ws[1:], ws[0])
        m = sum((wk * a[i].double() for wk, (_, _, a) in zip(ws[1:], terms[1:])), ws[0] * terms[0][2][i].double())
        m = torch.where(big_w > 0, m / big_w.clamp_min(torch.finfo(torch.float64).tiny), terms[-1][2][i].double())
        const += float(sum((wk * (a[i].double() - m) ** 2).sum() for wk, (_, _, a) in zip(ws, terms)))
        dtype = terms[0][1][i].dtype
        hi = m.to(dtype)
        weights.append(big_w.to(dtype))
        anchors.append(hi)
        lows.append((m - hi.double()).to(dtype))
    return (1.0, weights, anchors, lows), terms[0][1][0].new_tensor(const)


def quadratic_penalty_ref(params: Sequence[Tensor], terms: Sequence[QuadraticTerm]) -> Optional[Tensor]:
    """Plain autograd reference of :func:`quadratic_penalty`: a Python loop over terms and parameters."""
    terms = [t for t in terms if t[0] != 0.0]
    if not terms or not params:
        return None
    total = 0.0
    for coef, weights, anchors in terms:
        for p, w, a in zip(params, weights, anchors):
            total = total + coef * (w * (p - a) ** 2).sum()
    return total


def rank_shard() -> slice:
    """The slice of a data set this rank handles under ``torch.distributed`` (every sample when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return slice(None)
    return slice(dist.get_rank(), None, dist.get_world_size())


def all_reduce_mean_(tensors: list[Tensor]) -> list[Tensor]:
    """Average ``tensors`` in place across the ranks of ``torch.distributed`` (a no-op when it is not initialised).

    The tensors travel as one flat buffer, so there is one collective per call, not one per tensor.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1 or not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    torch._foreach_copy_(tensors, [v.view_as(t) for v, t in zip(flat.split([t.numel() for t in tensors]), tensors)])
    return tensors


# Samples per pass when the caller leaves the chunk size to per_sample_grad_moment: at most MAX_CHUNK, and at most
# as many as keep one pass's per-sample gradients within PER_SAMPLE_GRAD_BYTES (their squares or absolute values
# take as much again). EfficientNet-Lite0 (4.68 M parameters, 18.7 MB of gradients per sample) then takes 28 samples
# at a time. Its Fisher over 512 samples at 32x32 (1 thread, CPU time, peak resident): chunks of 256 41-49 s and
# 13.3 GiB, 64 25 s / 3.9 GiB, 28 17-18 s / 2.2 GiB, 16 18 s / 1.5 GiB, one sample at a time (the loop) 20 s / 0.5 GiB.
MAX_CHUNK = 256
PER_SAMPLE_GRAD_BYTES = 512 << 20


def auto_chunk_size(params: Sequence[Tensor]) -> int:
    """Samples per vectorised pass of :func:`per_sample_grad_moment` for ``params`` (see ``PER_SAMPLE_GRAD_BYTES``)."""
    per_sample = sum(p.numel() * p.element_size() for p in params)
    return max(1, min(MAX_CHUNK, PER_SAMPLE_GRAD_BYTES // max(1, per_sample)))


def per_sample_grad_moment(model: nn.Module, sample_loss: Callable[..., Tensor], inputs: Sequence[Tensor],
                           power: int, chunk_size: Optional[int] = None) -> list[Tensor]:
    """Mean over samples of ``|d sample_loss_n / d theta|^power`` for every trainable parameter.

    ``inputs``: tensors whose first dimension indexes the N samples; sample n is fed as
    ``sample_loss(model(x_n[None]), *rest_n[None])`` where ``x_n`` is its row of ``inputs[0]`` and ``sample_loss``
    returns a scalar. ``power=2`` with a log-likelihood gives the diagonal Fisher; ``power=1`` gives MAS's
    importance. ``chunk_size``: samples per vectorised pass (memory only; ``None``: :func:`auto_chunk_size` of the
    trainable parameters, or ``MAX_CHUNK`` for plain linear stacks, which form no per-sample gradient). Returns
    float32 tensors shaped like the trainable parameters. The model is put in eval mode for the pass and restored
    afterwards; its parameters and gradients are left untouched. A model ``torch.func.vmap`` cannot trace gets one
    backward pass per sample, with a ``RuntimeWarning`` that says why.
    """
    if power not in (1, 2):
        raise ValueError(f"per_sample_grad_moment: power must be 1 or 2, got {power!r}")
    model = unwrap_ddp(model)
    params = trainable_parameters(model)
    out = [torch.zeros_like(p) for p in params]
    n = int(inputs[0].shape[0])
    if n == 0:
        return out
    was_training = model.training
    model.eval()
    try:
        done = _moment_linear(model, sample_loss, inputs, power, chunk_size or MAX_CHUNK, out)
        try:
            if not done:
                _moment_vmap(model, sample_loss, inputs, power, chunk_size or auto_chunk_size(params), out)
        except (RuntimeError, NotImplementedError) as e:
            # Some modules (in-place ops on inputs, data-dependent control flow) cannot be vmapped.
            warnings.warn(f"per_sample_grad_moment: torch.func.vmap cannot trace {type(model).__name__} "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); computing the "
                          f"{n} per-sample gradients one backward pass at a time", RuntimeWarning, stacklevel=2)
            for t in out:
                t.zero_()
            _moment_loop(model, sample_loss, inputs, power, out)
    finally:
        model.train(was_training)
    torch._foreach_div_(out, float(n))
    return out


# Leaf modules that act on each sample on its own and elementwise (in eval mode), so that a layer's input and
# output gradient of sample n depend on sample n alone.
_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Flatten,
                nn.Dropout)


def _linear_stack(model: nn.Module) -> Optional[list[nn.Linear]]:
    """The ``nn.Linear`` layers of ``model`` if it is a plain stack (``nn.Sequential`` / :class:`cltk.models.MLP`
    containers of linear layers and :data:`_ELEMENTWISE` modules) whose trainable parameters all belong to them,
    else ``None``."""
    from cltk.models import MLP

    for m in model.modules():
        if any(True for _ in m.children()):
            if type(m) not in (nn.Sequential, MLP):
                return None
        elif not isinstance(m, (nn.Linear, *_ELEMENTWISE)):
            return None
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    owned = {id(p) for m in linears for p in m.parameters(recurse=False)}
    if not linears or any(id(p) not in owned for p in trainable_parameters(model)):
        return None
    return linears


def _moment_linear(model, sample_loss, inputs, power, chunk_size, out) -> bool:
    """Sum over samples of ``|per-sample gradient|^power`` of a linear stack without forming the gradients: sample
    n's weight gradient is the outer product ``delta_n x_n^T`` and ``|delta_n x_n^T|^p = |delta_n|^p (|x_n|^p)^T``,
    so for each layer it is ``(|delta|^p)^T (|x|^p)`` for the weight and ``sum_n |delta_n|^p`` for the bias,
    ``delta_n`` being the gradient of sample n's loss at the layer's output (one backward pass of the chunk with the
    per-sample loss gradients of the logits as ``grad_outputs``). Returns False, with ``out`` untouched, when the
    model is not such a stack or a layer is called more than once or on other than ``[N, features]`` inputs."""
    from torch.func import grad, vmap

    linears = _linear_stack(model)
    if linears is None:
        return False
    params = trainable_parameters(model)
    slot = {id(p): i for i, p in enumerate(params)}
    seen: dict[nn.Module, tuple[Tensor, Tensor]] = {}
    plain = True

    def record(module: nn.Module, args: tuple, output: Tensor) -> None:
        nonlocal plain
        plain = plain and module not in seen and args[0].dim() == 2
        seen[module] = (args[0].detach(), output)

    def loss_one(logits: Tensor, *row: Tensor) -> Tensor:
        return sample_loss(logits.unsqueeze(0), *(r.unsqueeze(0) for r in row))

    dlogits = vmap(grad(loss_one))
    moment = torch.square if power == 2 else torch.abs
    sums = [torch.zeros_like(p) for p in params]
    handles = [m.register_forward_hook(record) for m in linears]
    try:
        for s in range(0, int(inputs[0].shape[0]), chunk_size):
            seen.clear()
            rows = [t[s:s + chunk_size] for t in inputs]
            with torch.enable_grad():
                logits = model(rows[0])
            if not plain or len(seen) != len(linears):
                return False
            live = [m for m in linears if seen[m][1].requires_grad]
            deltas = torch.autograd.grad(logits, [seen[m][1] for m in live],
                                         grad_outputs=dlogits(logits.detach(), *rows[1:]), allow_unused=True)
            for m, d in zip(live, deltas):
                if d is None:
                    continue
                dp = moment(d)
                if id(m.weight) in slot:
                    sums[slot[id(m.weight)]].addmm_(dp.t(), moment(seen[m][0]))
                if m.bias is not None and id(m.bias) in slot:
                    sums[slot[id(m.bias)]].add_(dp.sum(0))
    finally:
        for h in handles:
            h.remove()
        seen.clear()
    torch._foreach_add_(out, sums)
    return True


def _moment_vmap(model, sample_loss, inputs, power, chunk_size, out) -> None:
    from torch.func import functional_call, grad, vmap

    named = [(k, v) for k, v in model.named_parameters() if v.requires_grad]
    names = [k for k, _ in named]
    frozen = {k: v.detach() for k, v in model.named_parameters() if not v.requires_grad}
    frozen.update(dict(model.named_buffers()))

    def loss_one(theta: dict, *row: Tensor) -> Tensor:
        logits = functional_call(model, {**frozen, **theta}, (row[0].unsqueeze(0),))
        return sample_loss(logits, *(r.unsqueeze(0) for r in row[1:]))

    theta = {k: v.detach() for k, v in named}
    per_sample = vmap(grad(loss_one), in_dims=(None,) + (0,) * len(inputs))
    n = int(inputs[0].shape[0])
    for s in range(0, n, chunk_size):
        g = per_sample(theta, *(t[s:s + chunk_size] for t in inputs))
        gl = [g[k] for k in names]
        moments = torch._foreach_abs(gl) if power == 1 else torch._foreach_mul(gl, gl)
        torch._foreach_add_(out, [m.sum(0) for m in moments])


def _moment_loop(model, sample_loss, inputs, power, out) -> None:
    params = trainable_parameters(model)
    for i in range(int(inputs[0].shape[0])):
        row = [t[i:i + 1] for t in inputs]
        g = torch.autograd.grad(sample_loss(model(row[0]), *row[1:]), params, allow_unused=True)
        g = [torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, params)]
        torch._foreach_add_(out, torch._foreach_abs(g) if power == 1 else torch._foreach_mul(g, g))


class QuadraticRegularizer:
    """Mixin for :class:`~cltk.methods.base.Method` subclasses whose penalty is a sum of quadratic terms.

    Keeps ``importances`` and ``anchors`` (lists of terms, each a list of tensors, one per trainable parameter) and
    a coefficient per term from :meth:`term_coefficients`; :meth:`penalty` is :func:`quadratic_penalty` over them
    (``None`` until the first term is stored). State round-trips through ``state_dict`` as tensors and floats.
    """

    importances: list[list[Tensor]]
    anchors: list[list[Tensor]]

    def _init_terms(self) -> None:
        self.importances, self.anchors = [], []

    def term_coefficients(self) -> list[float]:
        raise NotImplementedError

    def penalty_terms(self) -> list[QuadraticTerm]:
        return list(zip(self.term_coefficients(), self.importances, self.anchors))

    def penalty(self, model: nn.Module) -> Optional[Tensor]:
        if not self.importances:
            return None
        terms = [t for t in self.penalty_terms() if t[0] != 0.0]
        if len(terms) <= 1:
            return quadratic_penalty(trainable_parameters(model), terms)
        # Several terms (EWC after the second task): one merged term plus a constant, so that a step costs one
        # term's passes over the parameters whatever the number of tasks. Formed again whenever a term is added or
        # replaced or a coefficient changes.
        key = (tuple(t[0] for t in terms), tuple(map(id, self.importances)), tuple(map(id, self.anchors)))
        cache = getattr(self, "_merged", None)
        if cache is None or cache[0] != key:
            # the cache keeps the term lists alive, so their ids cannot be reused while it holds them
            cache = (key, list(self.importances), list(self.anchors), *merge_quadratic_terms(terms))
            self._merged = cache
        merged, const = cache[3], cache[4]
        pen = quadratic_penalty(trainable_parameters(model), [merged])
        return const if pen is None else pen + const

    def _terms_state(self) -> dict:
        return {"importances": [detached_copy(w) for w in self.importances],
                "anchors": [detached_copy(a) for a in self.anchors]}

    def _load_terms_state(self, state: dict) -> None:
        imps, anchors = state["importances"], state["anchors"]
        if len(imps) != len(anchors):
            raise ValueError(f"state: {len(imps)} importance terms but {len(anchors)} anchor terms")
        model = getattr(self, "model", None)
        if model is not None:
            params = trainable_parameters(model)
            for k, (w, a) in enumerate(zip(imps, anchors)):
                check_like(f"state['importances'][{k}]", w, params)
                check_like(f"state['anchors'][{k}]", a, params)
            dev = [p.device for p in params]
            imps = [[t.to(d) for t, d in zip(w, dev)] for w in imps]
            anchors = [[t.to(d) for t, d in zip(a, dev)] for a in anchors]
        self.importances = [detached_copy(w) for w in imps]
        self.anchors = [detached_copy(a) for a in anchors]
