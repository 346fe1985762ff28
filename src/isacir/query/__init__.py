"""The light, on-device side: backbone + adaptive token learner -> pseudo tokens."""

from .backbones import BackboneSpec, create_backbone, list_backbones, register_backbone, resolve_backbone
from .encoder import METHODS, Pic2WordMapper, QueryEncoder, QueryEncoderConfig
from .preprocess import PreprocessConfig
from .token_learner import AdaptiveTokenLearner

__all__ = [
    "AdaptiveTokenLearner",
    "METHODS",
    "Pic2WordMapper",
    "BackboneSpec",
    "PreprocessConfig",
    "QueryEncoder",
    "QueryEncoderConfig",
    "create_backbone",
    "list_backbones",
    "register_backbone",
    "resolve_backbone",
]
