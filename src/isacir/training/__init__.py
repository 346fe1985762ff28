"""Training from unlabeled images: teacher-feature cache, losses, trainer."""

from ..data import ImageRecord, content_hash, discover_images
from .cache import BuildReport, TeacherCache
from .config import TrainConfig, list_presets, load_config
from .trainer import TrainResult, train

__all__ = [
    "BuildReport",
    "ImageRecord",
    "TeacherCache",
    "TrainConfig",
    "TrainResult",
    "content_hash",
    "discover_images",
    "list_presets",
    "load_config",
    "train",
]
