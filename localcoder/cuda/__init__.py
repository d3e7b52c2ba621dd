"""localcoder's CUDA backend (issue 6, in progress): Triton kernels on the GGUF block formats.

Needs torch with Triton (the `cuda` extra). Without a GPU the kernels run through Triton's interpreter
(TRITON_INTERPRET=1, set before this package is imported), which the tests use on small shapes.
"""
