"""slimkit: make PyTorch vision models small and fast (channel pruning, INT8 quantization)."""

__version__ = "0.1.0"
