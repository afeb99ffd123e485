"""dismax: JAX-native generative models of large disordered periodic materials and Dismai-Bench."""

from dismax.errors import DismaxError, DismaxInputError
from dismax.structures import Crystals

__all__ = ["Crystals", "DismaxError", "DismaxInputError"]
__version__ = "0.1.0"
