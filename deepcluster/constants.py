"""Names shared by the Scipion face of the plugin (never by core/)."""

# Attributes stored per subtomogram in Scipion sets (sqlite columns).
LABEL_ATTR = '_dcLabel'          # ground-truth class name (String), from simulation
FEATURE_ATTR = '_dcFeatures'     # 32 floats as a comma-separated String
FEATURE_INDEX_ATTR = '_dcRow'    # row of the item in the features .npy

# The shipped models, by the name `deepcluster embed --model` takes (as core/network.py's
# SHIPPED_MODELS, a test checks; not imported from there, which would load torch with the GUI)
SHIPPED_MODELS = ['default', 'accurate']

# `deepcluster embed --precision` choices (core/device.py's PRECISIONS, a test checks)
PRECISIONS = ['auto', 'fp32', 'bf16']

# Plugin variables
DEEPCLUSTER_DEVICE = 'DEEPCLUSTER_DEVICE'
