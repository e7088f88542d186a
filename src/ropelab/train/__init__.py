"""Training: data packing and the causal-LM loop shared by pretraining, fine-tuning and CLEX."""
