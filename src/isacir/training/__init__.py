"""Training from unlabeled images: data sources, teacher-feature cache, losses, trainer."""

from .cache import BuildReport, TeacherCache
from .data import ImageRecord, content_hash, discover_images
from .trainer import TrainConfig, TrainResult, train

__all__ = [
    "BuildReport",
    "ImageRecord",
    "TeacherCache",
    "TrainConfig",
    "TrainResult",
    "content_hash",
    "discover_images",
    "train",
]
