"""The hybrid runtime: routed experts in RAM, a VRAM cache of them keyed by router frequency (issue 7)."""
