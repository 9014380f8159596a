"""Drop-in ``torch.optim`` replacements and wrappers."""
from cltk.optim.attention_meta import AttentionMetaOptimizer
from cltk.optim.meta_lstm_gate import MetaLSTMGate
from cltk.optim.migu import MIGU, MagnitudeRecorder, MIGUAdamW

__all__ = ["AttentionMetaOptimizer", "MIGU", "MIGUAdamW", "MagnitudeRecorder", "MetaLSTMGate"]
