"""From subtomogram files to features: MRC I/O, resampling, embedding."""
