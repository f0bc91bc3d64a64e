"""Shipped weights of the embedded digits models (safetensors package data)."""
