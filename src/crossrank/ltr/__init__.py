"""Learning to rank: features from the pipeline's signals, LambdaMART (LightGBM), and learning from clicks
(log format, simulator, position-bias estimation, inverse-propensity weighting)."""

from crossrank.ltr.clicks import Impression, read_click_log, write_click_log
from crossrank.ltr.featurelog import FeatureTable
from crossrank.ltr.features import FeatureSet, default_feature_set
from crossrank.ltr.lambdamart import LambdaMART, split_queries, train_lambdamart
from crossrank.ltr.propensity import PositionBias, click_labels, estimate_position_bias, grade_labels
from crossrank.ltr.simulator import CascadeModel, ClickSimulator, PositionBasedModel, graded_click_probs

__all__ = [
    "CascadeModel", "ClickSimulator", "FeatureSet", "FeatureTable", "Impression", "LambdaMART", "PositionBasedModel",
    "PositionBias", "click_labels", "default_feature_set", "estimate_position_bias", "grade_labels",
    "graded_click_probs", "read_click_log", "split_queries", "train_lambdamart", "write_click_log",
]
