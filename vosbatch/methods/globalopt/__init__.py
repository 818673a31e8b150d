"""globalopt (Ponimatkin et al., WACV 2023): spectral initialisation and Eq. 1 over the whole video."""
from ..registry import register_method
from .config import GlobalOptConfig, OptimisationConfig, SpectralConfig, feature_grid

register_method("globalopt", GlobalOptConfig, "vosbatch.methods.globalopt.method:globalopt", feature_grid=feature_grid,
                stage_names=lambda cfg: ["init"])

__all__ = ["GlobalOptConfig", "OptimisationConfig", "SpectralConfig", "feature_grid"]
