"""Reading images: discovery (folders, file lists, tar shards), safe decoding, the decode dataset.

Training, the gallery and evaluation all read images through this package, so none of them has
to import another stage to open a file. Nothing here imports torch: the edge runtime uses it too.
"""

from .dataset import DecodeDataset, collate_list, iter_batches
from .imageio import IMAGE_EXTENSIONS, ImageSource, load_image
from .sources import TRAIN_EXTENSIONS, DataSourceError, ImageRecord, content_hash, discover_images, index_tar

__all__ = [
    "IMAGE_EXTENSIONS",
    "TRAIN_EXTENSIONS",
    "DataSourceError",
    "DecodeDataset",
    "ImageRecord",
    "ImageSource",
    "collate_list",
    "content_hash",
    "discover_images",
    "index_tar",
    "iter_batches",
    "load_image",
]
