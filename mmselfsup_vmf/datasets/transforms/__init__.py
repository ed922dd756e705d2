from .device_multicrop import DeviceMultiCropInput  # noqa: F401
from .multicrop import MultiCrop, dino_view_pipeline  # noqa: F401
