"""Small differentiable building blocks shared by the methods (warping, motion, spectral)."""
