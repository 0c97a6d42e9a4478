"""The GPU itself: CUDA is visible, bf16 is supported, and a bf16 matmul agrees with fp32.

What every other GPU test assumes. The versions (torch, CUDA, transformers, lightning,
flash-attn) are printed for the log of ``benchmarks/gpu_smoke.sh``.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_cuda_bf16_matmul_agrees_with_fp32():
    import lightning
    import transformers

    device = torch.device("cuda")
    print(
        f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers "
        f"{transformers.__version__}, lightning {lightning.__version__}; "
        f"{torch.cuda.get_device_name(device)}, capability {torch.cuda.get_device_capability(device)}"
    )
    try:
        import flash_attn

        print(f"flash_attn {flash_attn.__version__}")
    except ImportError as err:
        print(f"flash_attn not importable: {err}")
    assert torch.cuda.is_bf16_supported()
    a_NN = torch.randn(1024, 1024, device=device, generator=torch.Generator(device).manual_seed(0))
    reference_NN = a_NN @ a_NN
    product_NN = (a_NN.bfloat16() @ a_NN.bfloat16()).float()
    error = float((product_NN - reference_NN).norm() / reference_NN.norm())
    print(f"bf16 matmul relative error vs fp32: {error:.2e}")
    # bf16 keeps 8 significant bits (relative rounding 2**-9 ~ 2e-3 per input): an error
    # of 1e-2 or more means the kernel is not computing this product.
    assert error < 1e-2
