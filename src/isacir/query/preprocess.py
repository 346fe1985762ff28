"""Query-side image preprocessing, described by plain data.

The same description is written next to an exported edge model, where it is replayed with Pillow
and NumPy only, so it must stay simple: resize the short side, centre-crop, scale, normalise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch
from torchvision import transforms as T

if TYPE_CHECKING:
    from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_INTERP = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}


@dataclass
class PreprocessConfig:
    image_size: int = 224
    #: The short side is resized to ``round(image_size / crop_pct)`` before the centre crop.
    crop_pct: float = 1.0
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = field(default=IMAGENET_MEAN)
    std: tuple[float, float, float] = field(default=IMAGENET_STD)

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERP:
            raise ValueError(f"interpolation must be one of {sorted(_INTERP)}, got {self.interpolation!r}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        m0, m1, m2 = (float(m) for m in self.mean)
        s0, s1, s2 = (float(s) for s in self.std)
        self.mean, self.std = (m0, m1, m2), (s0, s1, s2)

    @property
    def resize_size(self) -> int:
        return int(round(self.image_size / self.crop_pct))

    def transform(self) -> T.Compose:
        return T.Compose(
            [
                T.Resize(self.resize_size, interpolation=_INTERP[self.interpolation], antialias=True),
                T.CenterCrop(self.image_size),
                T.ToTensor(),
                T.Normalize(self.mean, self.std),
            ]
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        return cls(**d)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transform()(image)
