"""Living beside TensorFlow in one process.

CUDA builds of torch ship triton, which torchvision (through ``torch._dynamo``) imports. Loaded
after TensorFlow, triton's LLVM clashes with TensorFlow's and the process dies with a segmentation
fault. When TensorFlow is already loaded and triton is not, importing triton would crash anyway,
so polyviz makes ``import triton`` raise ImportError instead: torch then simply reports that triton
is unavailable (it is needed only for ``torch.compile`` on GPUs).
"""

from __future__ import annotations

import sys

__all__ = ["guard_triton"]


def guard_triton() -> bool:
    """Block the triton import if TensorFlow is loaded and triton is not. Returns True if blocked."""
    if "tensorflow" in sys.modules and "triton" not in sys.modules:
        sys.modules["triton"] = None  # type: ignore[assignment]  # makes `import triton` raise ImportError
        return True
    return False
