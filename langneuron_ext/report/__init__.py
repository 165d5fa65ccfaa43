"""Reports: plots of neuron sets, phases and NLL changes, and a `report.md` that gathers them."""
from .markdown import layer_profile, neuron_table, phase_table, write_report
from .plots import (plot_layer_distribution, plot_matrix, plot_overlap, plot_phase_profile)

__all__ = ["write_report", "layer_profile", "neuron_table", "phase_table",
           "plot_layer_distribution", "plot_overlap", "plot_phase_profile", "plot_matrix"]
