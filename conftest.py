"""Headless Scipion for plain pytest: configure before pyworkflow is imported."""
import warnings

from deepcluster import headless

headless.configure()
warnings.filterwarnings('ignore', category=DeprecationWarning)
