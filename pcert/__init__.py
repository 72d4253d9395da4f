"""pcert: certify machine-learning models against training-data poisoning."""
__version__ = "0.1.0"
