"""Fusion classifier over image and text embeddings."""
