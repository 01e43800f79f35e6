"""Ready-made problems: 2-parameter toys for phase portraits, the paper's network, and real data
sets that ship inside scikit-learn (no download).

>>> import sa_clip.problems as zoo
>>> zoo.make_problem("tanh").P
2
"""

from .cnn import digits_cnn, digits_cnn_network
from .datasets import DATASETS, load_dataset
from .networks import logistic_regression, n_classes, paper_network, real_problem
from .registry import PROBLEMS, make_problem
from .toys import (
    Logistic2D,
    Scalar,
    TanhToy,
    linear1d,
    location_problem,
    logistic2d,
    quartic,
    tanh_regression,
)

__all__ = ["DATASETS", "load_dataset", "paper_network", "real_problem", "TanhToy", "Logistic2D",
           "Scalar", "tanh_regression", "logistic2d", "location_problem", "PROBLEMS",
           "make_problem", "quartic", "logistic_regression", "linear1d", "n_classes",
           "digits_cnn", "digits_cnn_network"]
