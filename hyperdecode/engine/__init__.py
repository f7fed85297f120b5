"""Sampling, sequences, the generation loop and the LLM entry point."""
