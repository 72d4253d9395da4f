"""Aggregation ensembles (DPA, DPA*, FA; plurality and run-off votes) and their certificates."""
from .multi_sample import BatchResult, MultiSampleResult, certify_multi_sample, evaluate_allocation
from .outputs import MemberOutputs, member_outputs
from .per_sample import dpa_certificate, fa_certificate, per_sample_certificate, roe_certificate
from .scores import ScoresEnsemble, load_scores
from .voting import plurality, roe

__all__ = ["BatchResult", "MemberOutputs", "MultiSampleResult", "ScoresEnsemble", "certify_multi_sample",
           "dpa_certificate", "evaluate_allocation", "fa_certificate", "load_scores", "member_outputs",
           "per_sample_certificate", "plurality", "roe", "roe_certificate"]
