"""immunofold: fast structure prediction of antibodies, nanobodies and T-cell receptors from sequence."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("immunofold")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"


def predict(
    heavy: str | None = None,
    light: str | None = None,
    alpha: str | None = None,
    beta: str | None = None,
    kind: str | None = None,
    refine: bool = True,
    numbering: str = "imgt",
    device: str = "cpu",
    name: str = "input",
    clean_geometry: bool = False,
):
    """Predict one antibody (heavy + light), nanobody (heavy) or TCR (alpha + beta) from sequence: a `Prediction`
    (structure, per-residue error in Å, numbering). `immunofold.prediction.predict`, imported at the first call to
    keep `import immunofold` fast; the same parameters (a test pins them)."""
    from immunofold.prediction import predict as _predict

    return _predict(heavy=heavy, light=light, alpha=alpha, beta=beta, kind=kind, refine=refine, numbering=numbering,
                    device=device, name=name, clean_geometry=clean_geometry)


__all__ = ["predict", "__version__"]
