"""Abstract Gradient Training: parameter bounds under poisoning, and certificates from them."""
from .certify import certify
from .config import AGTResult, BudgetPoint, Certificates, Objective, TrainConfig
from .training import train_nominal, train_with_bounds

__all__ = ["AGTResult", "BudgetPoint", "Certificates", "Objective", "TrainConfig", "certify",
           "train_nominal", "train_with_bounds"]
