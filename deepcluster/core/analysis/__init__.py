"""From features to classes: clustering, choice of k, evaluation, figures."""
