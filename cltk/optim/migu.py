"""MIGU as drop-in optimizers: magnitude-based gradient updating (arXiv 2406.17245).

Every ``nn.Linear`` of the model gets a forward hook that accumulates the L1 magnitude of its output per output
feature (``|y|`` summed over batch and tokens) with :func:`cltk.ops.row_l1_accumulate_`. At ``step()`` the
magnitudes of all layers are thresholded in one batched call, ``mask = mag >= quantile(mag, threshold)``
(:func:`cltk.ops.topk_row_mask_batched`), and only the weight rows in the mask are updated; then the magnitudes
are reset.

* :class:`MIGU` wraps any ``torch.optim`` optimizer: it zeroes the masked rows of ``.grad`` in place and steps
  the inner optimizer.
* :class:`MIGUAdamW` is a drop-in for ``torch.optim.AdamW`` that folds the mask into one fused AdamW pass
  (:func:`cltk.ops.masked_adamw_`) and never reads the masked gradient rows; ``.grad`` is left untouched.

Semantics shared by both:

* Magnitudes are recorded on every forward run with autograd enabled (forwards under ``torch.no_grad()`` or
  ``torch.inference_mode()``, such as evaluation, are ignored), and accumulate over all such forwards since the
  previous ``step()``; so with gradient accumulation they cover all micro-batches. The hook holds no reference
  to the activation.
* A layer with no recorded forward since the previous step is not masked (all its rows are updated).
* Masking starts with the first step when ``mask_first_task=True`` (the default here: an optimizer does not know
  about tasks). With ``mask_first_task=False`` the optimizer behaves as the unmasked one until
  :meth:`begin_task` has been called a second time, which is what the reference implementation does (it masks
  from the second task on); call ``begin_task()`` at the start of every task.
* ``mask_bias=True`` also masks ``bias[j]`` with row ``j``; by default biases are always updated.
* Under ``torch.distributed`` (initialised, world size > 1) the magnitudes of all layers live in one flat fp32
  buffer that is summed across ranks with a single ``all_reduce`` before the threshold, so every rank applies
  the same mask, equal to the mask of one process seeing the whole global batch.
* The mask only depends on each layer's magnitudes up to a common factor, so forwards recomputed by activation
  checkpointing (recorded again) do not change it.
* ``close()`` (or leaving a ``with`` block) removes exactly the hooks this optimizer installed.
* The magnitude buffer is allocated on the device of the model's linear layers when the optimizer is built:
  move the model first (as for any optimizer), and keep all its ``nn.Linear`` layers on one device.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import torch
from torch import Tensor, nn

from cltk.ops.masked_adamw import masked_adamw_
from cltk.ops.migu import row_l1_accumulate_, topk_row_mask_batched

__all__ = ["MIGU", "MIGUAdamW", "MagnitudeRecorder"]

_HOOK_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

try:  # DTensor: the parameters of FSDP2 (torch.distributed.fsdp.fully_shard) and tensor parallelism
    from torch.distributed.tensor import DTensor as _DTensor
    from torch.distributed.tensor import Replicate as _Replicate
    from torch.distributed.tensor import Shard as _Shard
except ImportError:  # a torch built without torch.distributed
    _DTensor = None


def _local_rows(t: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """``(tensor to update in place, its 1-D row mask)``: ``t`` and ``keep`` themselves, or for a DTensor (a
    parameter, gradient or moment sharded by FSDP2 or tensor parallelism) its local shard and the rows of ``keep``
    that shard holds. ``keep`` covers all rows and is the same on every rank; a shard of the rows (``Shard(0)``)
    takes its rows of it, a shard of another dim or a replica all of it. No communication."""
    if _DTensor is None or not isinstance(t, _DTensor):
        return t, keep
    mesh = t.device_mesh
    row_placements = []
    for pl in t.placements:
        if isinstance(pl, _Shard) and type(pl) is not _Shard:
            raise NotImplementedError(f"MIGU: row masks on a DTensor with placement {pl} are not supported "
                                      f"(plain Shard, Replicate and Partial are)")
        row_placements.append(_Shard(0) if isinstance(pl, _Shard) and pl.dim == 0 else _Replicate())
    full = _DTensor.from_local(keep, mesh, [_Replicate()] * mesh.ndim, run_check=False)
    return t.to_local(), full.redistribute(mesh, row_placements).to_local()


def _check_threshold(owner: str, threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f"{owner}: threshold must be a float in [0, 1), got {threshold!r}")
    t = float(threshold)
    if not 0.0 <= t < 1.0:  # also rejects nan
        raise ValueError(f"{owner}: threshold must be in [0, 1), got {threshold!r}")
    return t


def _check_bool(owner: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: {name} must be a bool, got {value!r}")
    return value


class MagnitudeRecorder:
    """Forward hooks that accumulate every ``nn.Linear`` output's per-feature L1 magnitude.

    All magnitudes live in one flat fp32 buffer ``flat`` = ``[mag_0 | mag_1 | ... | counts]``: ``mags[i]`` is a
    view of layer i's ``d_out`` entries and ``counts[i]`` the number of forwards recorded for it since the last
    :meth:`reset`. Keeping counts in the same buffer lets one ``all_reduce`` synchronise both.
    """

    def __init__(self, model: nn.Module, owner: str = "MIGU") -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"{owner}: model must be an nn.Module, got {type(model).__name__}")
        named = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not named:
            raise ValueError(
                f"{owner}: the model ({type(model).__name__}) has no nn.Linear layers, so there are no output "
                "magnitudes to record and nothing to mask")
        devices = {m.weight.device for _, m in named}
        if len(devices) != 1:
            raise ValueError(f"{owner}: all nn.Linear layers must be on one device, got {sorted(map(str, devices))}")
        self.owner = owner
        self.names = [n for n, _ in named]
        self.layers = [m for _, m in named]
        sizes = [m.out_features for m in self.layers]
        total = sum(sizes)
        self.flat = torch.zeros(total + len(sizes), dtype=torch.float32, device=devices.pop())
        self.mags = list(torch.split(self.flat[:total], sizes))
        self.counts = self.flat[total:]
        self._handles = [m.register_forward_hook(self._make_hook(i)) for i, m in enumerate(self.layers)]

    def _make_hook(self, i: int) -> Callable:
        acc, counts = self.mags[i], self.counts

        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if not torch.is_grad_enabled() or not isinstance(output, Tensor):
                return
            with torch.no_grad():
                y = output.detach()
                if y.dtype not in _HOOK_DTYPES:
                    y = y.float()
                row_l1_accumulate_(acc, y)
                counts[i] += 1.0

        return hook

    @property
    def closed(self) -> bool:
        return not self._handles

    def all_reduce(self) -> None:
        """Sum the magnitudes (and counts) over all ranks in one collective, when torch.distributed is up."""
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.flat, op=dist.ReduceOp.SUM)

    def masks(self, threshold: float) -> list[Optional[Tensor]]:
        """Per layer: the bool row mask (True = update) or None for a layer with no recorded forward."""
        recorded = [i for i, c in enumerate(self.counts.tolist()) if c > 0]
        out: list[Optional[Tensor]] = [None] * len(self.layers)
        if recorded:
            for i, mk in zip(recorded, topk_row_mask_batched([self.mags[i] for i in recorded], threshold)):
                out[i] = mk
        return out

    def reset(self) -> None:
        self.flat.zero_()

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def state_dict(self) -> dict:
        return {"layer_names": list(self.names), "flat": self.flat.detach().cpu().clone()}

    def load_state_dict(self, sd: dict) -> None:
        self.check_state_dict(sd)
        self.flat.copy_(sd["flat"])

    def check_state_dict(self, sd: dict) -> None:
        if list(sd["layer_names"]) != self.names:
            raise ValueError(f"{self.owner}: the saved state was recorded on layers {sd['layer_names']}, "
                             f"this model has {self.names}")
        flat = sd["flat"]
        if flat.shape != self.flat.shape:
            raise ValueError(f"{self.owner}: saved magnitude buffer has shape {list(flat.shape)}, "
                             f"expected {list(self.flat.shape)}")


class _MIGUBase:
    """Task bookkeeping and hook lifetime shared by MIGU and MIGUAdamW."""

    recorder: MagnitudeRecorder
    threshold: float
    mask_bias: bool
    mask_first_task: bool
    tasks_begun: int
    # The per-layer row masks (True = updated; None = not masked) applied by the latest step, in the order of
    # recorder.layers / recorder.names.
    last_masks: list[Optional[Tensor]] = []

    def begin_task(self) -> None:
        """Mark the start of a task (call it for every task, the first included)."""
        self.tasks_begun += 1

    @property
    def masking(self) -> bool:
        """Whether the next step applies masks (see ``mask_first_task``)."""
        return self.mask_first_task or self.tasks_begun >= 2

    def _param_masks(self) -> dict[int, Tensor]:
        """id(param) -> row mask for the weights (and biases with mask_bias) of every recorded layer."""
        self.recorder.all_reduce()
        out: dict[int, Tensor] = {}
        if not self.masking:
            self.last_masks = [None] * len(self.recorder.layers)
            return out
        self.last_masks = self.recorder.masks(self.threshold)
        for layer, mk in zip(self.recorder.layers, self.last_masks):
            if mk is None:
                continue
            out[id(layer.weight)] = mk
            if self.mask_bias and layer.bias is not None:
                out[id(layer.bias)] = mk
        return out

    def _migu_state(self) -> dict:
        return {**self.recorder.state_dict(), "tasks_begun": self.tasks_begun}

    def _load_migu_state(self, sd: dict) -> None:
        self.recorder.load_state_dict(sd)
        self.tasks_begun = int(sd["tasks_begun"])

    def close(self) -> None:
        """Remove the forward hooks this optimizer installed (and only those)."""
        self.recorder.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class MIGU(_MIGUBase, torch.optim.Optimizer):
    """Wrap any ``torch.optim`` optimizer with MIGU's magnitude-based row masking.

    Args:
        optimizer: the inner optimizer; its ``param_groups`` and ``state`` are shared, not copied, so LR schedulers
            and checkpoints see one optimizer.
        model: the module whose ``nn.Linear`` layers are hooked and masked (it must contain at least one).
        threshold: quantile level T in [0, 1); rows with magnitude >= quantile(mag, T) are updated (0.7 keeps the
            top 30%).
        mask_bias: also zero ``bias.grad[j]`` for masked rows j.
        mask_first_task: mask from the first step (True) or only from the second :meth:`begin_task` on.

    ``step()`` zeroes the masked rows of each hooked weight's ``.grad`` in place, steps the inner optimizer, and
    resets the magnitudes. ``state_dict()`` is ``{"optimizer": inner state, "migu": magnitudes and task count}``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module, *, threshold: float = 0.7,
                 mask_bias: bool = False, mask_first_task: bool = True) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"MIGU: optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.threshold = _check_threshold("MIGU", threshold)
        self.mask_bias = _check_bool("MIGU", "mask_bias", mask_bias)
        self.mask_first_task = _check_bool("MIGU", "mask_first_task", mask_first_task)
        self.tasks_begun = 0
        self.optimizer = optimizer
        # Optimizer.__init__ sets up the hook registries (so LR schedulers and step hooks work); the groups and
        # state are then replaced by the inner optimizer's own objects.
        torch.optim.Optimizer.__init__(self, optimizer.param_groups, optimizer.defaults)
        self.param_groups = optimizer.param_groups
        self.state = optimizer.state
        self.recorder = MagnitudeRecorder(model, owner="MIGU")

    def mask_gradients_(self) -> dict[int, Tensor]:
        """Zero the masked gradient rows in place; returns the masks used (id(param) -> bool rows)."""
        masks = self._param_masks()
        if masks:
            for layer in self.recorder.layers:
                for p in (layer.weight, layer.bias):
                    if p is None or p.grad is None or id(p) not in masks:
                        continue
                    grad, keep = _local_rows(p.grad, masks[id(p)])
                    grad.masked_fill_(~keep.view(-1, *([1] * (grad.dim() - 1))), 0.0)
        return masks

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.mask_gradients_()
        self.optimizer.step()
        self.recorder.reset()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict) -> None:
        if "recorder" not in self.__dict__:  # called by Optimizer.__init__ while the wrapper is being built
            torch.optim.Optimizer.add_param_group(self, param_group)
        else:
            self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "migu": self._migu_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != {"optimizer", "migu"}:
            raise ValueError(f"MIGU: state_dict must have keys 'optimizer' and 'migu', got {sorted(state_dict)}")
        self.recorder.check_state_dict(state_dict["migu"])
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self.param_groups = self.optimizer.param_groups
        self.state = self.optimizer.state
        self._load_migu_state(state_dict["migu"])

    def __repr__(self) -> str:
        return (f"MIGU(threshold={self.threshold}, mask_bias={self.mask_bias}, "
                f"mask_first_task={self.mask_first_task}, layers={len(self.recorder.layers)}, "
                f"optimizer={self.optimizer!r})")


class MIGUAdamW(_MIGUBase, torch.optim.Optimizer):
    """``torch.optim.AdamW`` with MIGU's row mask folded into one fused step.

    Positional arguments are AdamW's (``params, lr, betas, eps, weight_decay, amsgrad``); the MIGU options are
    keyword-only. Default semantics equal "zero the masked gradient rows, then AdamW": momentum and weight decay
    still act on masked rows. ``freeze_masked_rows=True`` leaves masked rows (parameter and both moments)
    untouched instead; the tensor's step count, which sets the bias correction, still advances.

    The state per parameter is AdamW's (``step``: a float32 CPU scalar tensor, ``exp_avg``, ``exp_avg_sq``), so a
    ``state_dict`` loads into ``torch.optim.AdamW`` and back. The MIGU magnitudes are saved under the extra
    top-level key ``"migu"``. ``amsgrad`` and ``maximize`` are not supported (ValueError).
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 model: nn.Module, threshold: float = 0.7, mask_bias: bool = False, mask_first_task: bool = True,
                 freeze_masked_rows: bool = False, maximize: bool = False) -> None:
        owner = "MIGUAdamW"
        if isinstance(lr, Tensor) or not 0.0 <= lr:
            raise ValueError(f"{owner}: lr must be a float >= 0, got {lr!r}")
        if not 0.0 <= eps:
            raise ValueError(f"{owner}: eps must be >= 0, got {eps!r}")
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"{owner}: betas must be two floats in [0, 1), got {betas!r}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"{owner}: weight_decay must be >= 0, got {weight_decay!r}")
        if amsgrad:
            raise ValueError(f"{owner}: amsgrad=True is not supported, got amsgrad={amsgrad!r}")
        if maximize:
            raise ValueError(f"{owner}: maximize=True is not supported, got maximize={maximize!r}")
        self.threshold = _check_threshold(owner, threshold)
        self.mask_bias = _check_bool(owner, "mask_bias", mask_bias)
        self.mask_first_task = _check_bool(owner, "mask_first_task", mask_first_task)
        self.freeze_masked_rows = _check_bool(owner, "freeze_masked_rows", freeze_masked_rows)
        self.tasks_begun = 0
        defaults = dict(lr=float(lr), betas=(float(betas[0]), float(betas[1])), eps=float(eps),
                        weight_decay=float(weight_decay), amsgrad=False, maximize=False)
        torch.optim.Optimizer.__init__(self, params, defaults)
        self.recorder = MagnitudeRecorder(model, owner=owner)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        masks = self._param_masks()
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, row_masks, steps = [], [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("MIGUAdamW does not support sparse gradients")
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                mask = masks.get(id(p))
                if _DTensor is not None and isinstance(p, _DTensor):  # the step is per row: run it on the shard
                    p_local, mask = _local_rows(p, mask) if mask is not None else (p.to_local(), None)
                    params.append(p_local)
                    grads.append(p.grad.to_local())
                    exp_avgs.append(state["exp_avg"].to_local())
                    exp_avg_sqs.append(state["exp_avg_sq"].to_local())
                else:
                    params.append(p)
                    grads.append(p.grad)
                    exp_avgs.append(state["exp_avg"])
                    exp_avg_sqs.append(state["exp_avg_sq"])
                row_masks.append(mask)
                steps.append(state["step"])
            if not params:
                continue
            torch._foreach_add_(steps, 1.0)
            beta1, beta2 = group["betas"]
            masked_adamw_(params, grads, exp_avgs, exp_avg_sqs, row_masks, steps, lr=group["lr"], beta1=beta1,
                          beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                          freeze_masked_rows=self.freeze_masked_rows)
        self.recorder.reset()
        return loss

    def state_dict(self) -> dict:
        sd = torch.optim.Optimizer.state_dict(self)
        sd["migu"] = self._migu_state()
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a MIGUAdamW state_dict, or a ``torch.optim.AdamW`` one (magnitudes then start from zero)."""
        state_dict = dict(state_dict)
        migu = state_dict.pop("migu", None)
        if migu is not None:
            self.recorder.check_state_dict(migu)
        torch.optim.Optimizer.load_state_dict(self, state_dict)
        for group in self.param_groups:
            if group.get("amsgrad") or group.get("maximize"):
                raise ValueError("MIGUAdamW: cannot load a state with amsgrad=True or maximize=True")
        for st in self.state.values():
            # torch.optim.AdamW(fused=True) keeps step on the parameter's device; this optimizer keeps it on the CPU.
            if "step" in st and isinstance(st["step"], Tensor):
                st["step"] = st["step"].detach().to("cpu", torch.float32)
        if migu is not None:
            self._load_migu_state(migu)
        else:
            self.recorder.reset()

    def __repr__(self) -> str:
        return (f"MIGUAdamW(lr={self.defaults['lr']}, betas={self.defaults['betas']}, eps={self.defaults['eps']}, "
                f"weight_decay={self.defaults['weight_decay']}, threshold={self.threshold}, "
                f"mask_bias={self.mask_bias}, mask_first_task={self.mask_first_task}, "
                f"freeze_masked_rows={self.freeze_masked_rows}, layers={len(self.recorder.layers)})")
