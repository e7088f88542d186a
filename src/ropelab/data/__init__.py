"""Corpora: offline public-domain sources, deterministic document-level splits, tokenisation."""
