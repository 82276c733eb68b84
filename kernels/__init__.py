"""uld_kernels: fused Triton kernels for ULD. The combine+sample kernel lands with its issue; its torch reference and
fallback is uld_vllm.combine.combine (one copy of the math)."""
