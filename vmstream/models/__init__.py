"""VideoMamba and its parts: pure PyTorch first, fused kernels optional."""
