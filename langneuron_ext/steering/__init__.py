"""Residual-stream steering baselines: per-language residual means and DiffMean vectors."""
from .diffmean import (
                       DiffMeanError,
                       ResidualRecorder,
                       decoder_layers,
                       diffmean_steering,
                       diffmean_vectors,
)

__all__ = ["DiffMeanError", "ResidualRecorder", "decoder_layers", "diffmean_steering",
           "diffmean_vectors"]
