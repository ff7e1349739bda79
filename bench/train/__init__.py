"""Training: recipes, the one loop, trunk activations and the top trained from them, source and fine-tune jobs."""
