"""The collapse science, torch only: the NC metrics of a set of features and the detector of T_NC and fn*."""
