"""Installs mmselfsup_vmf, an OpenMMLab plugin for DINO-vMF, iBOT-vMF, SimDINO, SimDINOv2."""
from setuptools import find_packages, setup

# Ranges a GPU user can live with; the exact, tested pins are in requirements/constraints.txt.
INSTALL_REQUIRES = [
    'torch>=2.0',
    'torchvision',
    'numpy>=1.24,<2',          # numpy 2 breaks mmcv.adjust_hue (ColorJitter) in mmcv<=2.2
    'opencv-python<=4.11.0.86',  # the last opencv that accepts numpy 1.x
    'mmengine>=0.10.0,<1.0',
    'mmpretrain>=1.2.0,<1.3',
    'mmsegmentation>=1.2.0,<1.3',
    'ftfy', 'regex',           # mmseg.utils imports them but does not declare them
    'setuptools>=69,<81',      # mmengine needs pkg_resources, removed in setuptools 81
    'scipy', 'tensorboard',
]

# what the documented tools need beyond the library: scikit-learn (the digits dataset and the
# logistic probe of the study driver), scikit-image (the attention-map tool's sample image)
TOOLS_REQUIRE = ['scikit-learn', 'scikit-image']

setup(
    name='mmselfsup_vmf',
    version='0.1.0',
    license='Apache-2.0',
    description='DINO-vMF, iBOT-vMF, SimDINO and SimDINOv2 for the OpenMMLab runner',
    packages=find_packages(include=['mmselfsup_vmf', 'mmselfsup_vmf.*']),
    python_requires='>=3.9',
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # pure-python mmcv for CPU machines; mmseg 1.2.x asserts mmcv < 2.2.0
        'cpu': ['mmcv-lite>=2.0.0,<2.2.0'],
        # multi-crop on the device (MultiCropDataPreprocessor); kornia 0.9 needs torch>=2.5.1
        'device-aug': ['kornia>=0.9,<0.10'],
        'tools': TOOLS_REQUIRE,
        'tests': TOOLS_REQUIRE + ['kornia>=0.9,<0.10', 'pytest', 'pytest-timeout', 'pytest-xdist',
                                  'mpmath', 'ruff'],
    },
)
