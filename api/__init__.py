"""FastAPI search service and web page."""
