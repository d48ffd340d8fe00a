"""The models-from-code file MLflow stores with every version and runs when loading it.

Not imported by ratchet itself: setting the model at import is exactly what MLflow asks of this file.
"""

from mlflow.models import set_model

from ratchet.serving import RatchetClassifier

set_model(RatchetClassifier())
