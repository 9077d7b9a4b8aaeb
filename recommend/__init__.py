"""Recommendations: collaborative, content-based and popularity signals blended by a learned model."""
