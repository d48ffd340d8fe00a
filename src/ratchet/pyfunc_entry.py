"""The models-from-code file MLflow stores with every version and runs when loading it.

Not imported by ratchet itself: setting the model at import is exactly what MLflow asks of this file.
The `ratchet` it imports is the copy of ratchet's serving modules stored with the version (its
code/ratchet, first on sys.path while loading), so a version loads where ratchet is not installed.
"""

from mlflow.models import set_model

from ratchet.serving import RatchetClassifier

set_model(RatchetClassifier())
