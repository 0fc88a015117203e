from .base import Backend, Completion, GenerationRequest

__all__ = ["Backend", "Completion", "GenerationRequest"]
