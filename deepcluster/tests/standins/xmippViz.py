"""Stand-in for Xmipp's binding module ``xmippViz`` (see xmipp_base.py here): empty."""
