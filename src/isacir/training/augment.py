"""Query-side augmentation policies.

Only the light side sees augmented images; the teacher features come from the original image
(that is what makes them cacheable). Policies therefore must not change what a caption would say
about the image: no hue or saturation jitter (colour edits are queries), no flips (left/right
edits are queries). ``light`` is a mild scale jitter that keeps the layout; ``medium`` adds
brightness and contrast jitter, which scales each colour towards black or blends it with grey, so
its hue moves only where a channel clips and its name stays; ``none`` is plain preprocessing.
"""

from __future__ import annotations

from torchvision import transforms as T

from ..query.preprocess import _INTERP, PreprocessConfig

POLICIES = ("none", "light", "medium")


def query_transform(pre: PreprocessConfig, policy: str = "light") -> T.Compose:
    if policy not in POLICIES:
        raise ValueError(f"unknown augmentation policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if policy == "none":
        return pre.transform()
    steps = [
        T.RandomResizedCrop(
            pre.image_size, scale=(0.8, 1.0), ratio=(0.9, 1.1), interpolation=_INTERP[pre.interpolation], antialias=True
        )
    ]
    if policy == "medium":
        steps.append(T.ColorJitter(brightness=0.2, contrast=0.2))
    return T.Compose([*steps, T.ToTensor(), T.Normalize(pre.mean, pre.std)])
