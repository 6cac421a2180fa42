"""immunofold: fast structure prediction of antibodies, nanobodies and T-cell receptors from sequence."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("immunofold")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"


def predict(*args, **kwargs):
    """Predict one receptor; see `immunofold.prediction.predict` (imported lazily to keep start-up fast)."""
    from immunofold.prediction import predict as _predict

    return _predict(*args, **kwargs)


__all__ = ["predict", "__version__"]
