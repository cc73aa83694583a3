"""tl_lape: find and control language-specific neurons in TransformerLens models.

LAPE (Language Activation Probability Entropy, Tang et al., ACL 2024) measures, for every MLP
neuron, the probability that it fires on each language's text, and selects the neurons whose
firing is concentrated on few languages.
"""

from tl_lape._version import __version__
from tl_lape.collection.engine import collect_activation_stats
from tl_lape.collection.residual_means import ResidualMeans
from tl_lape.errors import LapeError
from tl_lape.experiments.analysis import (
    NeuronCard,
    StabilityReport,
    neuron_card,
    neuron_cards,
    split_half_stability,
)
from tl_lape.experiments.demo import DemoResult, run_demo
from tl_lape.experiments.evaluation import (
    EvaluationReport,
    MatrixEstimates,
    PerplexityMatrix,
    ReportEstimates,
    perplexity_matrix,
    run_evaluation,
    selectivity,
)
from tl_lape.experiments.steering import SteeringReport, run_steering_sweep, steer
from tl_lape.experiments.steering_study import SteeringStudy, run_steering_study
from tl_lape.experiments.views import (
    TokenView,
    TokenViewGrid,
    token_view,
    token_views_side_by_side,
)
from tl_lape.intervals import Estimate
from tl_lape.interventions.diffmean import diffmean_hooks
from tl_lape.interventions.generation import generate_with_hook_sets, generate_with_hooks
from tl_lape.interventions.hooks import (
    deactivated,
    deactivation_hooks,
    patching_hooks,
    steered,
    steering_hooks,
)
from tl_lape.judging.fluency import FluencyRule
from tl_lape.judging.identification import LanguageIdentifier
from tl_lape.judging.outputs import SteeringOutputs
from tl_lape.neurons import LanguageNeurons, random_matched_neurons
from tl_lape.selection import identify_language_neurons, lap_scores, lape_scores, lave_scores
from tl_lape.sources.corpora import (
    PAPER_LANGUAGES,
    filter_language,
    load_debian_handbook,
    load_handbook_parallel,
    load_hf_dataset,
    load_text_files,
)
from tl_lape.sources.demo_model import demo_model_path, load_demo_model
from tl_lape.sources.models import load_model
from tl_lape.stats import ActivationStats

__all__ = [
    "PAPER_LANGUAGES",
    "ActivationStats",
    "DemoResult",
    "Estimate",
    "EvaluationReport",
    "FluencyRule",
    "LanguageIdentifier",
    "LanguageNeurons",
    "LapeError",
    "MatrixEstimates",
    "NeuronCard",
    "PerplexityMatrix",
    "ReportEstimates",
    "ResidualMeans",
    "StabilityReport",
    "SteeringOutputs",
    "SteeringReport",
    "SteeringStudy",
    "TokenView",
    "TokenViewGrid",
    "__version__",
    "collect_activation_stats",
    "deactivated",
    "deactivation_hooks",
    "demo_model_path",
    "diffmean_hooks",
    "filter_language",
    "generate_with_hook_sets",
    "generate_with_hooks",
    "identify_language_neurons",
    "lap_scores",
    "lape_scores",
    "lave_scores",
    "load_debian_handbook",
    "load_demo_model",
    "load_handbook_parallel",
    "load_hf_dataset",
    "load_model",
    "load_text_files",
    "neuron_card",
    "neuron_cards",
    "patching_hooks",
    "perplexity_matrix",
    "random_matched_neurons",
    "run_demo",
    "run_evaluation",
    "run_steering_study",
    "run_steering_sweep",
    "selectivity",
    "split_half_stability",
    "steer",
    "steered",
    "steering_hooks",
    "token_view",
    "token_views_side_by_side",
]
