"""tl_lape: find and control language-specific neurons in TransformerLens models.

LAPE (Language Activation Probability Entropy, Tang et al., ACL 2024) measures, for every MLP
neuron, the probability that it fires on each language's text, and selects the neurons whose
firing is concentrated on few languages.
"""

from tl_lape.checkpoint import collect_activation_stats_resumable
from tl_lape.collect import collect_activation_stats
from tl_lape.demo import load_demo_model
from tl_lape.distributed import collect_activation_stats_distributed
from tl_lape.errors import LapeError
from tl_lape.hooks import deactivation_hooks, patching_hooks, steering_hooks
from tl_lape.neurons import LanguageNeurons
from tl_lape.selection import identify_language_neurons, lap_scores, lape_scores, lave_scores
from tl_lape.stats import ActivationStats

__version__ = "0.1.0"

__all__ = [
    "ActivationStats",
    "LanguageNeurons",
    "LapeError",
    "__version__",
    "collect_activation_stats",
    "collect_activation_stats_distributed",
    "collect_activation_stats_resumable",
    "deactivation_hooks",
    "identify_language_neurons",
    "lap_scores",
    "lape_scores",
    "lave_scores",
    "load_demo_model",
    "patching_hooks",
    "steering_hooks",
]
