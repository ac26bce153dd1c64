"""Viewers must be importable from here for Scipion to find them."""
from .viewers import (DeepClusterClassesGalleryViewer, DeepClusterClassesViewer, DeepClusterEmbedViewer,
                      DeepClusterSimulateViewer, DeepClusterTrainViewer)
