"""Install scipion-em-deepcluster. The version is read with a regex: importing the
package here would need pwem, which is absent under pip's build isolation."""
import re
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]",
                    (here / 'deepcluster' / '__init__.py').read_text(), re.M).group(1)

setup(
    name='scipion-em-deepcluster',
    version=version,
    description='Alignment-free classification of cryo-ET subtomograms by 3D shape '
                '(CNN trained on synthetic data + k-means), as a Scipion plugin',
    long_description=(here / 'README.rst').read_text(),
    long_description_content_type='text/x-rst',
    license='GPLv3',
    python_requires='>=3.8',
    packages=find_packages(exclude=['benchmarks', 'benchmarks.*']),
    include_package_data=True,
    package_data={'deepcluster': ['protocols.conf', 'models/*.pt', 'models/*.md']},
    install_requires=[
        'numpy>=1.22,<2',
        'scipy>=1.8,<=1.10.1',
        'matplotlib>=3.5,<=3.8.1',
        'mrcfile>=1.4,<=1.4.3',
        'gemmi>=0.6',
        'scikit-learn>=1.2',
        'openTSNE>=1.0',         # the 2-D map of the viewer and cluster --plots
        'umap-learn>=0.5',       # the map's UMAP option
        'torch>=2.0',
    ],
    extras_require={'scipion': ['scipion-em', 'scipion-em-tomo']},
    entry_points={
        'pyworkflow.plugin': ['deepcluster = deepcluster'],
        'console_scripts': ['deepcluster = deepcluster.cli:main'],
    },
)
