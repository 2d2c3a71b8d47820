"""Export finetuned models to GGUF and quantize them with llama.cpp."""
