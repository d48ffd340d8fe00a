"""The models-from-code file MLflow stores with every version and runs when loading it.

Not imported by ratchet itself: setting the model at import is exactly what MLflow asks of this file.
"""

import warnings

from mlflow.models import set_model

with warnings.catch_warnings():
    # predict() takes raw image arrays on purpose (see RatchetClassifier); MLflow warns about that
    warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method.*")
    from ratchet.serving import RatchetClassifier

set_model(RatchetClassifier())
