"""Image and text towers projecting into one shared embedding space."""
