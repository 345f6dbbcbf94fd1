"""Headline Studio trainer: data, fine-tuning, evaluation and the shared generation code."""
