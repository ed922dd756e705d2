from . import transforms  # noqa: F401
from .masked_collate import masked_collate, multicrop_collate  # noqa: F401
from .moving_fashion_mnist import FashionMNISTOffsets  # noqa: F401
from .seeded import EpochIndexSampler, SeededDataset  # noqa: F401
from .small_datasets import FashionMNISTSubset, SklearnDigits  # noqa: F401
