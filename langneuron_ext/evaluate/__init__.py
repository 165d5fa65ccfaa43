"""Evaluation of steering: the NLL-change matrix and output-language control.

    m = ln.evaluate.nll_matrix(model, tokenizer, neurons, texts, ["en", "fr", "de"])
    print(m.to_markdown())                 # NLL change against the baseline, 95% intervals
    c = ln.evaluate.language_control(model, tokenizer, neurons, stats, prompts, "fr", "de")
    print(c.to_markdown())                 # share identified as the target, Wilson intervals
"""
from .langcontrol import LanguageControl, language_control, language_controls, phase_control
from .nll import NllMatrix, nll_matrix
from .texts import token_windows

__all__ = ["nll_matrix", "NllMatrix", "language_control", "language_controls", "phase_control",
           "LanguageControl", "token_windows"]
