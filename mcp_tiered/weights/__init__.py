"""Model files: the Hugging Face hub, the default models, the GGUF header reader."""
