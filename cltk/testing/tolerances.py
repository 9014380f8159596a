"""The single table of numerical tolerances used by every op test.

fp32/fp64 kernels are compared with the reference directly. For bf16/fp16 the policy is relative to PyTorch
itself (flash-attention's rule): the kernel's max error against an fp32 reference must be at most
``LOWP_FACTOR`` times PyTorch's own error in the same dtype against that fp32 reference.
"""
import torch

ATOL_RTOL = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (2e-3, 2e-3),
}

LOWP_FACTOR = 2.0


def tol(dtype: torch.dtype) -> dict:
    atol, rtol = ATOL_RTOL[dtype]
    return {"atol": atol, "rtol": rtol}


def assert_lowp_within_factor(kernel_out, torch_out, fp32_ref, factor: float = LOWP_FACTOR, floor: float = 0.0):
    """Assert that |kernel - fp32_ref|_max <= factor * |torch_lowp - fp32_ref|_max (+ floor)."""
    k_err = (kernel_out.float() - fp32_ref.float()).abs().max().item() if kernel_out.numel() else 0.0
    t_err = (torch_out.float() - fp32_ref.float()).abs().max().item() if torch_out.numel() else 0.0
    assert k_err <= factor * t_err + floor, f"kernel error {k_err:.3e} > {factor} x torch error {t_err:.3e} (+{floor})"
