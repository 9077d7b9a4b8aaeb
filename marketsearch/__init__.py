"""Application wiring: workspace layout, command line, end-to-end jobs."""

__version__ = "0.1.0"
