"""tl_lape: find and control language-specific neurons in TransformerLens models.

LAPE (Language Activation Probability Entropy, Tang et al., ACL 2024) measures, for every MLP
neuron, the probability that it fires on each language's text, and selects the neurons whose
firing is concentrated on few languages.
"""

from tl_lape.errors import LapeError

__version__ = "0.1.0"

__all__ = [
    "LapeError",
    "__version__",
]
