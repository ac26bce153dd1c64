"""The encoder: network, model file, training and its data."""
