from .knn import extract_features, knn_accuracy, weighted_knn_classify  # noqa: F401
from .linear_probe import LinearProbeViT  # noqa: F401
from .pretrained_check import PretrainedMatchHook, check_pretrained_fits  # noqa: F401
