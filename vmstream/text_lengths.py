"""The official maximum text length (tokens) of each retrieval benchmark, torch-free so the
command line can offer them as choices without loading the models."""

from __future__ import annotations

# The official `max_txt_l` of each retrieval benchmark (video_mm configs, exp_zs/*/config.py).
MAX_TEXT_LEN = {"msrvtt": 32, "didemo": 64, "msvd": 64, "lsmdc": 96, "anet": 150, "activitynet": 150}
DEFAULT_MAX_TEXT_LEN = MAX_TEXT_LEN["msrvtt"]  # a search query is a caption-like sentence

__all__ = ["MAX_TEXT_LEN", "DEFAULT_MAX_TEXT_LEN"]
