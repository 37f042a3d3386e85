"""Self-Lengthen (QwenLM): a Generator writes, an Extender expands, over macro-iterations. The steps in
steps.py, the training sets in sets.py, the external trainer in trainer.py, the iteration loop and the recipe
contract in method.py."""

from lendata.methods.self_lengthen.method import METHOD

__all__ = ["METHOD"]
