"""Reports: plots of neuron sets, phases and NLL changes, and a `report.md` that gathers them."""
from .markdown import (
    ReportError,
    check_inputs,
    control_markdown,
    layer_profile,
    neuron_table,
    nll_from_json,
    phase_table,
    write_report,
    write_report_files,
)
from .plots import plot_layer_distribution, plot_matrix, plot_overlap, plot_phase_profile

__all__ = ["write_report", "write_report_files", "ReportError", "check_inputs", "nll_from_json",
           "control_markdown", "layer_profile", "neuron_table", "phase_table",
           "plot_layer_distribution", "plot_overlap", "plot_phase_profile", "plot_matrix"]
