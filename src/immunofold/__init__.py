"""immunofold: fast structure prediction of antibodies, nanobodies and T-cell receptors from sequence."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("immunofold")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"


def __getattr__(name: str):
    """`immunofold.predict` is `immunofold.prediction.predict`, imported at first use to keep `import immunofold`
    fast (it loads torch)."""
    if name == "predict":
        from immunofold.prediction import predict

        return predict
    raise AttributeError(f"module 'immunofold' has no attribute {name!r}")


__all__ = ["predict", "__version__"]
