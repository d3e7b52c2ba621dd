"""GGUF types and writing: HF -> GGUF conversion (llama.cpp-exact), quantizers and type mixes."""
