"""vmstream: streaming long-video analysis with VideoMamba's recurrent mode."""

__version__ = "0.1.0"
