from .device_multicrop import DeviceMultiCropInput, apply_device_crops_key, use_device_crops
from .multicrop import MultiCrop

__all__ = ['DeviceMultiCropInput', 'MultiCrop', 'apply_device_crops_key', 'use_device_crops']
