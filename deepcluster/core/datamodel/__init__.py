"""The data model: structures in, labelled synthetic subtomograms out."""
