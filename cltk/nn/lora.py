"""Low-rank adapters (LoRA, Hu et al. 2021, arXiv 2106.09685) around frozen ``nn.Linear`` layers.

``LoRALinear(base)`` computes ``y = base(x) + (alpha / r) * sum_i B_i A_i dropout(x)`` with ``A_i`` [r, in] and
``B_i`` [out, r]. The base weight and bias are frozen (``requires_grad=False``). Each adapter starts with ``A``
Kaiming-uniform (``a = sqrt(5)``, as in the reference ``loralib``) and ``B = 0``, so a new adapter leaves the
layer's output exactly unchanged. Several adapters may be stacked (O-LoRA adds one per task); their sum is
computed with one pair of matmuls on the concatenated factors.

:func:`apply_lora` swaps the ``nn.Linear`` modules of a model whose attribute name is in ``targets`` for
``LoRALinear`` wrappers, in place.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LoRALinear", "apply_lora", "lora_layers"]


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus ``n_adapters`` low-rank adapters.

    Args:
        base: the layer to adapt (kept, frozen, as ``self.base``).
        r: rank of each adapter (>= 1).
        alpha: scaling numerator; the update is multiplied by ``alpha / r``.
        dropout: dropout probability on the adapter's input (the base path sees ``x`` unchanged).
        n_adapters: adapters to create now (more with :meth:`add_adapter`).
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 8.0, dropout: float = 0.0,
                 n_adapters: int = 1) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"LoRALinear: base must be an nn.Linear, got {type(base).__name__}")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"LoRALinear: r must be an integer >= 1, got {r!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"LoRALinear: dropout must be in [0, 1), got {dropout!r}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, float(alpha), float(alpha) / r
        self.dropout = float(dropout)
        self.lora_A = nn.ParameterList()
        self.lora_B = nn.ParameterList()
        for _ in range(n_adapters):
            self.add_adapter()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def n_adapters(self) -> int:
        return len(self.lora_A)

    def add_adapter(self, generator: Optional[torch.Generator] = None) -> int:
        """Append a trainable adapter (``B = 0``: the output does not change); returns its index."""
        w = self.base.weight
        a = torch.empty(self.r, self.in_features, device=w.device, dtype=w.dtype)
        # kaiming_uniform_(a=sqrt(5)) on [r, in]: bound = 1 / sqrt(in)
        bound = 1.0 / math.sqrt(self.in_features)
        with torch.no_grad():
            a.uniform_(-bound, bound, generator=generator)
        self.lora_A.append(nn.Parameter(a))
        self.lora_B.append(nn.Parameter(torch.zeros(self.out_features, self.r, device=w.device, dtype=w.dtype)))
        return self.n_adapters - 1

    def set_trainable(self, indices: Sequence[int]) -> None:
        """Adapters in ``indices`` get ``requires_grad=True``, all others False."""
        keep = set(int(i) for i in indices)
        for i, (a, b) in enumerate(zip(self.lora_A, self.lora_B)):
            a.requires_grad_(i in keep)
            b.requires_grad_(i in keep)

    def delta_weight(self) -> Tensor:
        """``(alpha / r) * sum_i B_i A_i`` [out, in] (zeros without adapters)."""
        if self.n_adapters == 0:
            return torch.zeros_like(self.base.weight)
        return self.scaling * torch.cat(list(self.lora_B), 1) @ torch.cat(list(self.lora_A), 0)

    def merged_weight(self) -> Tensor:
        """The weight of the equivalent plain linear layer (in eval mode, or with dropout 0)."""
        return self.base.weight + self.delta_weight()

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)
        if self.n_adapters == 0:
            return y
        a = self.lora_A[0] if self.n_adapters == 1 else torch.cat(list(self.lora_A), 0)
        b = self.lora_B[0] if self.n_adapters == 1 else torch.cat(list(self.lora_B), 1)
        h = F.dropout(x, self.dropout, self.training) if self.dropout > 0 else x
        return y + F.linear(F.linear(h, a), b) * self.scaling

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, alpha={self.alpha}, "
                f"dropout={self.dropout}, adapters={self.n_adapters}")


def apply_lora(model: nn.Module, targets: Sequence[str], *, r: int = 8, alpha: float = 8.0, dropout: float = 0.0,
               n_adapters: int = 1, exclude: Sequence[str] = ()) -> dict[str, LoRALinear]:
    """Replace, in place, every ``nn.Linear`` of ``model`` whose attribute name is in ``targets`` and whose
    qualified name does not start with one of ``exclude``; returns ``{qualified name: LoRALinear}``.

    Raises ValueError (naming the targets and the layer names that exist) when nothing matches.
    """
    targets = tuple(targets)
    found = []
    names = []
    for qname, module in model.named_modules():
        if isinstance(module, LoRALinear):
            raise ValueError(f"apply_lora: the model already has LoRA layers (at {qname!r})")
        if not isinstance(module, nn.Linear):
            continue
        names.append(qname)
        if qname.rsplit(".", 1)[-1] in targets and not any(qname == e or qname.startswith(e + ".") for e in exclude):
            found.append(qname)
    if not found:
        short = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise ValueError(f"apply_lora: targets {list(targets)} match no nn.Linear of {type(model).__name__} "
                         f"(its linear layers are named {short})")
    out: dict[str, LoRALinear] = {}
    for qname in found:
        parent_name, _, attr = qname.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapped = LoRALinear(getattr(parent, attr), r=r, alpha=alpha, dropout=dropout, n_adapters=n_adapters)
        setattr(parent, attr, wrapped)
        out[qname] = wrapped
    return out


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """``{qualified name: LoRALinear}`` of ``model``, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
