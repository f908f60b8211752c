"""Synthetic training data: the embedded multilingual demo corpus (LLM backends come with the synth pipeline)."""

from __future__ import annotations

from st_retrofit.synth.demo import LANGUAGES, TEMPLATES, build_demo_dataset
from st_retrofit.synth.stage import synthesize

__all__ = ["LANGUAGES", "TEMPLATES", "build_demo_dataset", "synthesize"]
