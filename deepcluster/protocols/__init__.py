"""Protocols must be importable from here for Scipion to find them."""
from .protocol_base import ProtDeepClusterBase
from .protocol_simulate import ProtDeepClusterSimulate
from .protocol_train import ProtDeepClusterTrain
from .protocol_embed import ProtDeepClusterEmbed
from .protocol_cluster import ProtDeepClusterCluster
from .protocol_classify import ProtDeepClusterClassify
from .protocol_select import ProtDeepClusterSelect
