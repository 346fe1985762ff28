"""The light, on-device side: backbone + adaptive token learner -> pseudo tokens."""

from .backbones import BackboneSpec, create_backbone, list_backbones, register_backbone, resolve_backbone
from .encoder import QueryEncoder, QueryEncoderConfig
from .methods import QueryMethod, canonical_method, get_method, list_methods, register_method
from .methods.pic2word import Pic2WordMapper
from .preprocess import PreprocessConfig
from .token_learner import AdaptiveTokenLearner

__all__ = [
    "AdaptiveTokenLearner",
    "Pic2WordMapper",
    "BackboneSpec",
    "PreprocessConfig",
    "QueryEncoder",
    "QueryEncoderConfig",
    "QueryMethod",
    "canonical_method",
    "get_method",
    "list_methods",
    "register_method",
    "create_backbone",
    "list_backbones",
    "register_backbone",
    "resolve_backbone",
]
