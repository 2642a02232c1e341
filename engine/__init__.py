"""tapdiff: class-conditional speech generation with one frozen classifier as the whole backbone."""
from .api import Engine, Generation

__all__ = ["Engine", "Generation"]
