"""Evaluation: perplexity, passkey retrieval, reports and plots."""
