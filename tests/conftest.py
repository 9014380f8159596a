"""Session-wide test settings: one torch thread (the machines running the suite are small and shared)."""
import torch

torch.set_num_threads(1)
