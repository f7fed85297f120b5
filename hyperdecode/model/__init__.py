"""Model definitions, configs, checkpoint readers and tokenizers."""
