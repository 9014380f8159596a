"""Named experiment presets for ``cltk compare --preset NAME`` (command-line options override their fields).

``default``
    What ``cltk compare`` runs with no arguments: finetune and joint on Split MNIST-5k, task-IL and class-IL, seeds
    0, 1, 2, the 2x400 MLP, Adam 1e-3, batch 128, 300 iterations per task (a few minutes on one CPU thread).
``three-scenarios``
    The protocol of van de Ven & Tolias 2019 ("Three scenarios for continual learning") on the 5,000-image MNIST:
    Split MNIST (5 tasks of 2 digits), the 2x400 MLP, 2000 iterations per task, Adam 1e-3, batch 128, 5 seeds,
    all three scenarios; finetune, joint, EWC, online EWC, SI, LwF, ER, A-GEM, DER++ and iCaRL (iCaRL is left out
    of domain-IL, which it does not support).
``awm``
    Adaptive Weight Modulation (grids (4, 4), and the resolution sweep ``awm:resolution=[2,2]``, ``[8,8]``,
    ``[16,16]``) against Piggyback, EWC, fine-tuning (each also with per-task BatchNorm statistics,
    ``bn_stats=task``), the linear probe and separate copies on the pretrained EfficientNet-Lite0, task-IL, 3 seeds,
    200 steps of 32 images per task, each method's learning rate (and EWC's lambda) chosen on the validation split
    (docs/methods_awm.md); 33 runs, with ``--jobs 2 --threads 1`` on 2 cores about 42 minutes (measured in two
    parts: the 27 runs without ``bn_stats=task`` 30.4 min, those 6 runs 11.5 min).
``text``
    The MiniLM-L6 text sequence with the MIGU and LoRA-family methods (about an hour of CPU time).
``attention-meta``
    The attention meta-optimizer (Vettoruzzo et al. 2024) against finetune, EWC, SI, LwF, ER, the MAML-style
    baselines MAML-Rep and OML (Javed & White 2019; meta-trained on the other data set) and joint on 5-shot Split
    MNIST-5k (5 tasks of 2 digits, 5 training images per digit), class-IL, 3 seeds, the 2x400 MLP, batch 10,
    50 iterations per task (attention-meta acts on the first 5 of them), 60 meta-training episodes per seed; see
    docs/attention_meta.md (meta-training also sees 500 further labelled training images per task of the same
    digits). ``--benchmark rotated-mnist5k --scenarios domain --stream train_per_task=50`` and
    ``--benchmark split-fashion-mnist`` run the other two streams of the paper.
``bbc-cpt``
    Continual pre-training of the small in-tree GPT on the 5 BBC News topics (:mod:`cltk.lm.cpt`; docs/cpt.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["Preset", "PRESETS", "get_preset"]


@dataclass(frozen=True)
class Preset:
    description: str
    methods: tuple[str, ...]       # names or method specs ``name:field=value[:field=value]`` (cltk.cli)
    benchmark: str
    scenarios: tuple[str, ...]
    seeds: tuple[int, ...]
    iters: int
    model: str = "mlp"
    batch_size: int = 128
    stream_kwargs: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)   # method config overrides, e.g. {"lr": 1e-3}
    # per-method overrides by registered name, for every spec of that method: {"separate": {"lr": 1e-4}}; over
    # ``config``, under --set and the spec's own fields (cltk.cli.method_configs)
    method_config: dict[str, dict[str, Any]] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "default": Preset(
        description="finetune vs joint, Split MNIST-5k, task- and class-IL, 3 seeds, 300 iters/task (minutes on CPU)",
        methods=("finetune", "joint"), benchmark="split-mnist5k", scenarios=("task", "class"), seeds=(0, 1, 2),
        iters=300),
    "three-scenarios": Preset(
        description="van de Ven & Tolias 2019 protocol: Split MNIST-5k, MLP 2x400, 2000 iters/task, Adam 1e-3, "
                    "batch 128, 5 seeds, task/domain/class-IL",
        methods=("finetune", "joint", "ewc", "online-ewc", "si", "lwf", "er", "agem", "derpp", "icarl"),
        benchmark="split-mnist5k", scenarios=("task", "domain", "class"),
        seeds=(0, 1, 2, 3, 4), iters=2000, config={"optimizer": "adam", "lr": 1e-3}),
    "awm": Preset(
        description="AWM (grids 4x4, and the 2x2, 8x8, 16x16 sweep) vs Piggyback, EWC and fine-tuning (each also with "
                    "per-task BN statistics), linear probe and separate copies on a frozen/fine-tuned "
                    "EfficientNet-Lite0 (ImageNet weights), MNIST-5k/Fashion-MNIST halves at 32x32, task-IL, 3 seeds",
        methods=("awm", "awm:resolution=[2,2]", "awm:resolution=[8,8]", "awm:resolution=[16,16]", "piggyback", "ewc",
                 "ewc:bn_stats=task", "finetune", "finetune:bn_stats=task", "linear-probe", "separate"),
        benchmark="mnist5k-fmnist-halves",
        scenarios=("task",), seeds=(0, 1, 2), iters=200, model="efficientnet-lite0", batch_size=32,
        # chosen on the validation split, seed 0 (--eval-split val; docs/methods_awm.md); the others' defaults won
        method_config={"finetune": {"lr": 1e-4}, "linear-probe": {"lr": 3e-2}, "ewc": {"lambda_": 1e8}}),
    "text": Preset(
        description="continual fine-tuning of pretrained MiniLM-L6 on BBC topic, drug sentiment, drug condition "
                    "(task-IL, 3 seeds): FT, MIGU, LoRA, MIGU-LoRA, O-LoRA, ER, ER+MIGU",
        methods=("finetune", "migu", "lora", "migu-lora", "o-lora", "er", "er-migu"), benchmark="text-3tasks",
        scenarios=("task",), seeds=(0, 1, 2), iters=50, model="minilm", batch_size=16),
    # slot: add "maml-rep" / "oml" to methods when that method is registered
    "attention-meta": Preset(
        description="attention meta-optimizer vs finetune, EWC, SI, LwF, ER, MAML-Rep, OML, joint on 5-shot Split MNIST-5k "
                    "(class-IL, 3 seeds, 50 iters/task, 60 meta-training episodes)",
        methods=("attention-meta", "finetune", "ewc", "si", "lwf", "er", "maml-rep", "oml", "joint"),
        benchmark="split-mnist5k",
        scenarios=("class",), seeds=(0, 1, 2), iters=50, batch_size=10,
        stream_kwargs={"train_per_task": 10, "val_fraction": 0.0}, config={"meta_episodes": 60}),
    "bbc-cpt": Preset(
        description="continual pre-training of a small GPT on the 5 BBC News topics (held-out perplexity matrix): "
                    "AdamW, MIGU, MIGUAdamW, ER, ER+MIGU, joint; 3 seeds (docs/cpt.md)",
        methods=("vanilla", "migu", "migu-adamw", "er", "er-migu", "joint"), benchmark="bbc-cpt",
        scenarios=("domain",), seeds=(0, 1, 2), iters=60, model="gpt", batch_size=8),
}


def get_preset(name: str, **overrides: Any) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides) if overrides else PRESETS[name]
