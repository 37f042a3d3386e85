"""Training what the methods generate: the built-in LoRA trainer and its llama.cpp converter."""
