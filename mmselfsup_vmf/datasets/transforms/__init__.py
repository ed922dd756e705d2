from .device_multicrop import DeviceMultiCropInput  # noqa: F401
from .multicrop import MultiCrop  # noqa: F401
