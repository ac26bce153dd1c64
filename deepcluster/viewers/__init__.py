"""Viewers must be importable from here for Scipion to find them."""
from .viewers import (DeepClusterClassesViewer, DeepClusterEmbedViewer, DeepClusterSimulateViewer,
                      DeepClusterTrainViewer)
