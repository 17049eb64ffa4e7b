"""Evaluation: encoding splits to embeddings, zero-shot and retrieval metrics, prompts, plots."""
